"""A control for BDLM-drs: the joint run's domain step without the LLM (methods ncf_ft, lightgcn_ft).

BDLM's domain step (trainer.JointTrainer.domain_step) fine-tunes the pre-trained domain model on
each SFT batch's prompts: the answer item (1) and `joint.domain_negatives` of the prompt's other
candidates (0) - hard negatives (TF-IDF title neighbours, popular items) that the plain model's
uniform-negative pre-training never saw - with h_L appended to f_D. This runs exactly those steps
(same samples, batch schedule, negatives, step seeds, optimiser and learning rate) with no h_L and
no L_ML, and no LLM at all (a few minutes on CPU). So a gain of BDLM-drs over the plain model splits
into 'fine-tuning on the prompt candidates' (this control over the plain model) and 'the LLM's
feature and mutual learning' (BDLM-drs over this control).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..metrics import bucket_edges, evaluate
from ..store import dataset_root, new_run_dir, write_run
from ..joint.enhanced import EnhancedDomainModel
from ..joint.llm_io import item_mentions
from ..joint.trainer import joint_samples_of, joint_schedule, select_examples, step_seed


def joint_samples(params: Mapping, ds):
    """The joint run's training samples (the same list JointTrainer draws): prompts are built with
    the backbone's tokenizer only; which users, targets and candidates they hold does not depend
    on the tokenizer or on ET, so no LLM is loaded."""
    from ..llm.backbone import load_tokenizer
    from ..llm.prompts import PromptBuilder
    lp = params["llm"]
    builder = PromptBuilder(ds, load_tokenizer(lp["backbone"], lp.get("model_cache")), params, token_map=None)
    return joint_samples_of(builder, ds, params)


def candidate_examples(prompts, n_neg: int, rng: np.random.Generator):
    """(users, items, labels) as trainer.domain_examples picks them (the same mentions, same rng
    calls, same order), read from the prompts instead of the LLM's pass."""
    _, _, users, items = item_mentions(prompts, "candidates")
    keep, labels = select_examples(prompts, n_neg, rng)
    return users[keep], items[keep], labels


def candidate_finetune(domain, ds, params: Mapping, samples=None, progress: bool = True):
    """Fine-tune `domain` (in place, wrapped in the enhanced head with no extra feature) over the
    joint schedule; returns (enhanced model, per-step losses)."""
    from tqdm.auto import tqdm
    j = params["joint"]
    seed = int(params["seed"])
    samples = joint_samples(params, ds) if samples is None else samples
    if not samples:
        raise ValueError("candidate fine-tuning: no training samples (check sft.max_train_users / llm.task)")
    _, schedule, total = joint_schedule(params, len(samples))
    n_neg = int(j["domain_negatives"])   # checked with the other parameters (params._RULES)
    enhanced = EnhancedDomainModel(domain, 0)
    opt = torch.optim.Adam(enhanced.parameters(), lr=float(j["domain_lr"]))
    enhanced.train()
    losses = []
    for g in tqdm(range(total), desc="domain step without the LLM", disable=not progress):
        s = step_seed(seed, g)
        torch.manual_seed(s)
        rng = np.random.default_rng(s)
        u, i, y = candidate_examples([samples[n] for n in schedule[g]], n_neg, rng)
        loss = enhanced.loss(u, i, torch.zeros(len(u), 0), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append({"step": g + 1, "L_D": float(loss.detach())})
    return enhanced, losses


def run_candidate_finetune(params: Mapping, ds, run_dir=None, domain_run=None, progress: bool = True):
    """Pre-trained domain model (the one BDLM would start from) -> control run in `run_dir`
    (default: a new <output_dir>/<dataset>/control/<model>_ft folder): metrics.json
    (+ predictions.parquet for the report's paired tests), history.json."""
    from ..domain import domain_device
    from ..joint.run import pretrained_domain
    t0 = time.perf_counter()
    domain, domain_dir = pretrained_domain(params, ds, domain_run)
    domain.to(domain_device(params))   # as in the joint run (build_joint)
    enhanced, losses = candidate_finetune(domain, ds, params, progress=progress)
    train_seconds = time.perf_counter() - t0
    if not all(math.isfinite(h["L_D"]) for h in losses):   # before spending the test evaluation
        raise FloatingPointError(f"{run_dir or 'control'}: non-finite L_D in candidate fine-tuning (params.joint.domain_lr?)")

    def score(frame):
        n = len(frame)
        return enhanced.predict(frame["user"].to_numpy(), frame["item"].to_numpy(), torch.zeros(n, 0))
    ev = params["eval"]
    metrics, preds = evaluate(score, ds, "test", ev["max_users"], ev["ks"], return_predictions=True,
                              topk_users=ev.get("topk_users"), buckets=bucket_edges(params))
    metrics.update({"model": params["domain"]["model"], "control": "candidate fine-tuning without h_L",
                    "dataset": str(params["dataset"]), "preset": params.get("preset"),
                    "domain_run": str(domain_dir), "steps": len(losses),
                    "final_L_D": losses[-1]["L_D"] if losses else None,
                    "train_seconds": round(train_seconds, 2),
                    "wall_seconds": round(time.perf_counter() - t0, 2)})
    if run_dir is None:   # picked only now, so a failed run leaves no empty folder behind
        parent = dataset_root(params) / "control"
        run_dir = new_run_dir(parent, f"{params['domain']['model']}_ft")
    write_run(Path(run_dir), params, metrics, extra={"history.json": losses},
              predictions={"predictions.parquet": preds})
    return metrics, Path(run_dir)
