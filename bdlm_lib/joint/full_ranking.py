"""BDLM's two sides on the full catalogue (`eval.mode: full`; docs/protocol.md §3).

- BDLM-llm: each user's candidate-free prompt (`PromptBuilder.open_topk`) runs once and every
  `<iid_j>` logit at its answer position ranks the catalogue (`llm.scoring.all_item_scorer`).
- BDLM-drs: the cascade needs h_L at each item's token, i.e. the item in the prompt, so it cannot
  score thousands of items per user. It re-ranks a first stage's top `eval.full_rerank_n` instead:
  the first stage is the drs side's own domain model (`eval.full_first_stage: domain`, its
  embeddings without h_L) or the LLM side's all-`<iid>` ranking (`llm`), both at the drs side's
  best state; the N items become one top-K prompt's candidates and the cascade orders them.
  Items beyond N keep the first stage's order, so Recall@N is the first stage's.
Both need ET: without it an item is a title, and ranking every title is not applicable here.
"""
from __future__ import annotations

from typing import Mapping

from ..full_ranking import (domain_scorer, evaluate_full, full_ks, full_metrics, full_ranks, full_users,
                            not_ranked, ranked_pool, rerank_ranks, uniform_negatives)
from ..metrics import held_out_items
from ..llm.scoring import all_item_scorer
from .cascade import cascade_rerank_scores


def full_llm(llm, builder, ds, params: Mapping, batch_size: int = 8, progress: bool = False) -> dict:
    """The `full` entry of BDLM-llm's metrics (empty without eval.mode full)."""
    if params["eval"].get("mode") != "full":
        return {}
    if not builder.et:
        return not_ranked(params, "without ET an item is a title: every title's likelihood per user")
    return {"full": evaluate_full(all_item_scorer(llm, builder, batch_size), ds, params, progress=progress)}


def full_drs(llm, builder, enhanced, ds, params: Mapping, batch_size: int = 8,
             progress: bool = False) -> dict:
    """The `full` entry of BDLM-drs's metrics: the first stage's top N re-ranked by the cascade;
    the first stage's own metrics are kept beside (`first_stage`)."""
    ev = params["eval"]
    if ev.get("mode") != "full":
        return {}
    if not builder.et:
        return not_ranked(params, "without ET the cascade's first stage (all <iid> logits) does not exist")
    n, stage = int(ev.get("full_rerank_n") or 20), ev.get("full_first_stage") or "domain"
    if stage == "domain":
        first = domain_scorer(enhanced.domain)
    elif stage == "llm":
        first = all_item_scorer(llm, builder, batch_size)
    else:
        raise ValueError(f"eval.full_first_stage must be domain or llm, got {stage!r}")
    users = full_users(ds, params)
    seed = int(params["seed"])
    ranks, top = full_ranks(first, ds, "test", users, seed=seed, progress=progress, top_n=n)
    scores = cascade_rerank_scores(llm, builder, enhanced, users, top, seed, batch_size, progress)
    final = rerank_ranks(ranks.to_numpy(), top, held_out_items(ds, "test", users), scores)
    ks, pool, n_neg = full_ks(params), ranked_pool(ds, "test", users), uniform_negatives(params)
    return {"full": {"split": "test", "n_items": int(ds.n_items), **full_metrics(final, ks, pool, n_neg),
                     "rerank_n": n, "first_stage": {"model": stage, **full_metrics(ranks.to_numpy(), ks, pool, n_neg)}}}
