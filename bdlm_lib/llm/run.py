"""One LLM-side run end to end: backbone -> (ET, PE) -> (SFT) -> evaluation -> run folder.

Variants (the paper's baselines and ablations, §5.3 and §5.5.2):
  llmrec       the instruct backbone zero-shot, text-only prompts, no SFT (LLM-Rec baseline)
  instructrec  text-only SFT (= w/o ET)
  et_pe        ET + PE, SFT (= BDLM w/o JL)
  et           ET with the default random init of new rows, SFT (= w/o PE, no joint training)
Artefacts in `<output_dir>/<dataset>/llm/<variant>/`: metrics.json (evaluate's layout plus an
"llm" block: variant, wall times, pre-load info, alignment before/after SFT), params.yaml,
environment.json, history.json (SFT loss per step), and model/ with llm.save_model.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Mapping

import torch

from ..methods import METHODS
from ..full_ranking import not_ranked
from ..metrics import bucket_edges, evaluate
from ..store import dataset_root, new_run_dir, write_run
from .backbone import load_backbone
from .prompts import PromptBuilder
from .scoring import make_score_fn
from .sft import sft_train
from .tokens import alignment, extend_tokens, preload

# the LLM-only methods of the method table: variant -> {"et", "pe", "sft"}
VARIANTS = {name: dict(m.llm) for name, m in METHODS.items() if m.kind == "llm"}


def _read_tables(path: Path):
    from safetensors.torch import load_file
    f = path / "embeddings.safetensors" if path.is_dir() else path
    if not f.is_file():
        raise ValueError(f"{f}: no embeddings.safetensors (keys user, item)")
    t = load_file(str(f))
    if "user" not in t or "item" not in t:
        raise ValueError(f"{f}: needs the keys 'user' and 'item'")
    return t["user"], t["item"]


def domain_tables(params: Mapping, ds, domain_embeddings=None, allow_train: bool = True):
    """(user_emb, item_emb, source) for pre-loading.

    `domain_embeddings`: {"user": T, "item": T}, a (user, item) pair, or a path to a domain run
    folder / embeddings.safetensors. None: the standard domain run
    `<output_dir>/<dataset>/domain/<domain.model>/` if it exists, else a quick
    `bdlm_lib.domain.run_domain(params, ds)` when that is available (allow_train), else a seeded
    N(0, 1) table of size domain.dim (source "random", said in metrics.json and a warning).
    """
    src = None
    if isinstance(domain_embeddings, Mapping):
        u, i, src = domain_embeddings["user"], domain_embeddings["item"], "given"
    elif isinstance(domain_embeddings, (tuple, list)):
        (u, i), src = domain_embeddings, "given"
    elif domain_embeddings is not None:
        u, i = _read_tables(Path(domain_embeddings))
        src = str(domain_embeddings)
    else:
        std = dataset_root(params) / "domain" / params["domain"]["model"]
        if (std / "embeddings.safetensors").is_file():
            u, i = _read_tables(std)
            src = str(std)
            if u.shape[0] != ds.n_users or i.shape[0] != ds.n_items:
                src = None  # a run on another sample of the dataset: not ours
        if src is None and allow_train:
            try:
                from ..domain import run_domain  # written by the domain helper
                rd = run_domain(params, ds)[-1]  # (model, metrics, run_dir)
                u, i = _read_tables(Path(rd))
                src = str(rd)
            except (ImportError, AttributeError, TypeError, ValueError, FileNotFoundError) as e:
                warnings.warn(f"no domain model available ({type(e).__name__}: {e}); "
                              "pre-loading a seeded random table instead")
    if src is None:
        g = torch.Generator().manual_seed(int(params["seed"]))
        d = int(params["domain"]["dim"])
        u = torch.randn(ds.n_users, d, generator=g)
        i = torch.randn(ds.n_items, d, generator=g)
        src = f"random(seed={params['seed']})"
    u, i = torch.as_tensor(u).float(), torch.as_tensor(i).float()
    if u.shape[0] != ds.n_users or i.shape[0] != ds.n_items:
        raise ValueError(f"domain tables {tuple(u.shape)}/{tuple(i.shape)} do not match the dataset "
                         f"({ds.n_users} users, {ds.n_items} items) [{src}]")
    return u, i, src


def prepare_llm(params: Mapping, ds, variant: str, domain_embeddings=None, model=None, tokenizer=None):
    """Backbone + ET (+ PE) + PromptBuilder for a variant; also what a joint trainer starts from.
    Returns (model, tokenizer, builder, info) with info = {token_map, tables, preload, alignment}."""
    if variant not in VARIANTS:
        raise ValueError(f"LLM variant '{variant}': expected one of {', '.join(VARIANTS)}")
    v = VARIANTS[variant]
    llm = params["llm"]
    if model is None:
        model, tokenizer = load_backbone(llm["backbone"], llm.get("model_cache"), llm["dtype"],
                                         llm["attn_implementation"])
        if torch.cuda.is_available():
            model.to("cuda")
    info: dict = {"token_map": None, "tables": None, "preload": None, "alignment_before": None}
    tm = None
    if v["et"]:
        tm = extend_tokens(model, tokenizer, ds.n_users, ds.n_items)
        info["token_map"] = tm
        if v["pe"] or domain_embeddings is not None:
            u, i, src = domain_tables(params, ds, domain_embeddings)
            info["tables"] = (u, i)
            info["tables_source"] = src
            if v["pe"]:
                info["preload"] = preload(model, tm, u, i, seed=int(params["seed"]))
            info["alignment_before"] = alignment(model, tm, u, i, seed=int(params["seed"]))
    builder = PromptBuilder(ds, tokenizer, params, tm)
    return model, tokenizer, builder, info


def run_llm(params: Mapping, ds, variant: str, domain_embeddings=None, progress: bool = True,
            run_dir=None):
    """Run one LLM variant and write its run folder; returns (metrics, run_dir)."""
    t0 = time.perf_counter()
    v = VARIANTS.get(variant)
    if v is None:
        raise ValueError(f"LLM variant '{variant}': expected one of {', '.join(VARIANTS)}")
    if run_dir is None:
        parent = dataset_root(params) / "llm"
        run_dir = new_run_dir(parent, variant)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model, tok, builder, info = prepare_llm(params, ds, variant, domain_embeddings)
    t_prep = time.perf_counter() - t0
    hist = None
    t1 = time.perf_counter()
    if v["sft"]:
        samples = builder.train_samples()
        # Cao et al. 2024: MIM / BPR samples mixed in (sft.aux_tasks, sft.aux_ratio); a no-op for none
        from .aux_tasks import add_aux_samples
        samples = add_aux_samples(samples, ds, builder, params)
        hist = sft_train(model, tok, samples, params, run_dir=run_dir, progress=progress)
    t_sft = time.perf_counter() - t1
    after = None
    if info["tables"] is not None:
        after = alignment(model, info["token_map"], *info["tables"], seed=int(params["seed"]))
    t2 = time.perf_counter()
    bs = int(params["sft"]["eval_batch_size"])
    metrics, preds = evaluate(make_score_fn(model, builder, bs, progress), ds, "test",
                              max_users=params["eval"]["max_users"], return_predictions=True,
                              topk_users=params["eval"].get("topk_users"), buckets=bucket_edges(params))
    t_eval = time.perf_counter() - t2
    metrics.update(not_ranked(params, "title likelihoods of every item per user (thousands of passes)"
                              if not builder.et else "the one-pass ranking of every <iid> token is not built"))
    metrics["llm"] = {
        "variant": variant, **v,
        "backbone": params["llm"]["backbone"],
        "prompt_format": builder.fmt,
        "sft_samples": hist["n_samples"] if hist else 0,
        "sft_steps": hist["total_steps"] if hist else 0,
        "final_loss": hist["loss"][-1] if hist and hist["loss"] else None,
        "trainable": hist["mode"] if hist else None,
        "preload": info["preload"], "preload_source": info.get("tables_source"),
        "alignment_before": info["alignment_before"], "alignment_after": after,
        "seconds": {"prepare": round(t_prep, 1), "sft": round(t_sft, 1), "eval": round(t_eval, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    }
    if params["llm"].get("save_model"):
        model.save_pretrained(run_dir / "model")
        tok.save_pretrained(run_dir / "model")
    write_run(run_dir, params, metrics, predictions={"predictions.parquet": preds})
    return metrics, run_dir
