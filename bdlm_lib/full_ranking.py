"""Full-catalogue ranking (`eval.mode: full`), beside the paper's 1-of-20 candidate sets.

Each evaluated user's held-out item is ranked against every item the user has not interacted
with before it: the training items (and those `data.train_keep` / `data.cold_items` removed from
training: the user did interact with them, so they are neither positives nor negatives) and, for
the test split, the validation item. This is RecBole's full-sort evaluation of a leave-one-out
split. With one held-out item per user,

    Recall@K = 1 if rank < K else 0,     NDCG@K = 1 / log2(rank + 2) if rank < K else 0

(rank 0-based), averaged over users, as RecBole and Microsoft Recommenders compute them for a
single relevant item (tests/test_full_ranking.py checks NDCG against scikit-learn's
`ndcg_score`). Ties are broken by a seeded permutation of the items, so a constant scorer gets
chance-level metrics, as in the candidate sets.

A scorer is `score_users(users [B]) -> scores [B, n_items]` (higher = better).

Beside them, the expected HR@K against n uniform negatives (n = testset.n_candidates - 1), the
candidate sets most papers draw: with the held-out item at rank r among the P other items the user
has not touched, n negatives drawn uniformly without replacement from those P leave it in the top
K when fewer than K of the r items above it are drawn, a hypergeometric probability (scipy's
`hypergeom.cdf(K - 1, P, r, n)`), averaged over users. It is exact, not sampled, and says how much
of a gap to a paper's 1-of-20 figure the choice of negatives alone can make (our candidate sets
draw popular and title-similar negatives, which are harder than uniform ones).

Two-stage ranking (BDLM-drs): a first stage ranks the catalogue and keeps each user's top N
(`full_ranks(..., top_n=N)`); a second stage scores only those N and re-orders them
(`rerank_ranks`). Items beyond the first N keep their first-stage rank, so Recall@N is the first
stage's and the re-ranking moves NDCG@K and Recall@K for K < N.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .metrics import held_out_items

ScoreUsers = Callable[[np.ndarray], np.ndarray]


def seen_items(ds, split: str) -> pd.DataFrame:
    """(user, item) pairs that are not ranked for `split`: everything the user touched before."""
    parts = [ds.train[["user", "item"]], ds.dropped[["user", "item"]]]
    if split == "test":
        parts.append(ds.valid[["user", "item"]])
    return pd.concat(parts, ignore_index=True)


def full_ranks(score_users: ScoreUsers, ds, split: str, users: np.ndarray, seed: int = 0,
               chunk: int = 256, progress: bool = False, top_n: int = 0):
    """0-based rank of each user's held-out item among the items it has not touched (index user).
    With `top_n` > 0, also the [len(users), top_n] array of each user's first top_n ranked items
    (best first, ties in the same seeded order): returns (ranks, top)."""
    from tqdm.auto import tqdm

    users = np.asarray(users, dtype=np.int64)
    held = held_out_items(ds, split, users)
    seen = seen_items(ds, split)
    seen = seen[seen["user"].isin(users)]
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 13])).permutation(ds.n_items)
    ranks = np.empty(len(users), dtype=np.int64)
    top = np.empty((len(users), int(top_n)), dtype=np.int64)
    row_of = pd.Series(np.arange(len(users)), index=users)
    for s in tqdm(range(0, len(users), chunk), disable=not progress, desc="full ranking", leave=False):
        u, pos = users[s:s + chunk], held[s:s + chunk]
        scores = np.asarray(score_users(u), dtype=np.float64)
        if scores.shape != (len(u), ds.n_items):
            raise ValueError(f"full ranking: the scorer returned {scores.shape}, expected {(len(u), ds.n_items)}")
        if np.isnan(scores).any():
            raise ValueError("full ranking: scores contain NaN")
        mask = seen[seen["user"].isin(u)]
        rows = row_of.reindex(mask["user"].to_numpy()).to_numpy() - s
        scores[rows, mask["item"].to_numpy()] = -np.inf        # touched before: not ranked
        sp = scores[np.arange(len(u)), pos][:, None]
        ahead = (scores > sp) | ((scores == sp) & (order[None, :] < order[pos][:, None]))
        ranks[s:s + chunk] = ahead.sum(1)
        if top_n:   # sort by score (descending), then by the seeded order: the same ties as `ahead`
            key = np.lexsort((np.broadcast_to(order, scores.shape), -scores), axis=-1)
            top[s:s + chunk] = key[:, :top_n]
    ranks = pd.Series(ranks, index=pd.Index(users, name="user"))
    return (ranks, top) if top_n else ranks


def rerank_ranks(first_ranks: np.ndarray, top: np.ndarray, held: np.ndarray,
                 rerank_scores: np.ndarray) -> np.ndarray:
    """Ranks after a second stage re-orders each user's first-stage top N (`top` [U, N], with
    `rerank_scores` [U, N] aligned to it): a held-out item inside the top N takes its place in the
    new order (ties keep the first-stage order); one outside keeps its first-stage rank (>= N)."""
    first_ranks = np.asarray(first_ranks, dtype=np.int64)
    top, sc = np.asarray(top), np.asarray(rerank_scores, dtype=np.float64)
    if top.shape != sc.shape:
        raise ValueError(f"rerank: {sc.shape} scores for a top-N of {top.shape}")
    hit = top == np.asarray(held)[:, None]
    inside = hit.any(1)
    if not np.array_equal(inside, first_ranks < top.shape[1]):
        raise ValueError("rerank: the top-N lists do not agree with the first-stage ranks")
    col = hit.argmax(1)
    sp = sc[np.arange(len(sc)), col][:, None]
    idx = np.arange(top.shape[1])[None, :]
    ahead = ((sc > sp) | ((sc == sp) & (idx < col[:, None]))).sum(1)
    return np.where(inside, ahead, first_ranks)


def ranked_pool(ds, split: str, users: np.ndarray) -> np.ndarray:
    """How many other items each user's held-out item is ranked against: the items the user has
    not touched (`seen_items`), less the held-out item itself."""
    users = np.asarray(users, dtype=np.int64)
    held = pd.Series(held_out_items(ds, split, users), index=users)
    seen = seen_items(ds, split).drop_duplicates()
    seen = seen[seen["user"].isin(users)]
    seen = seen[seen["item"].to_numpy() != held.reindex(seen["user"]).to_numpy()]
    n_seen = seen.groupby("user").size().reindex(users, fill_value=0).to_numpy()
    return ds.n_items - 1 - n_seen


def uniform_hr(ranks: np.ndarray, pool: np.ndarray, n_neg: int, ks: Sequence[int] = (1, 2)) -> dict:
    """Expected HR@K against `n_neg` negatives drawn uniformly without replacement from each
    user's `pool` other items, given the held-out item's full-catalogue rank (module docstring)."""
    from scipy.stats import hypergeom
    r, m = np.asarray(ranks, dtype=np.int64), np.asarray(pool, dtype=np.int64)
    if len(r) and (m < n_neg).any():
        raise ValueError(f"uniform HR: a user has fewer than {n_neg} items to draw negatives from")
    return {f"HR@{k} uniform": float(np.mean(hypergeom.cdf(k - 1, m, r, n_neg))) for k in ks}


def full_metrics(ranks: np.ndarray, ks: Sequence[int] = (10, 20), pool: np.ndarray | None = None,
                 n_neg: int = 0) -> dict:
    """Recall@K, NDCG@K and MRR of 0-based ranks; with each user's `pool` and `n_neg`, also the
    expected HR@1 and HR@2 against n_neg uniform negatives (`uniform_hr`)."""
    r = np.asarray(ranks, dtype=np.float64)
    out = {f"Recall@{k}": float(np.mean(r < k)) for k in ks}
    out.update({f"NDCG@{k}": float(np.mean(np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0))) for k in ks})
    out["MRR"] = float(np.mean(1.0 / (r + 1.0)))
    if pool is not None and n_neg:
        out.update(uniform_hr(ranks, pool, n_neg), uniform_negatives=int(n_neg))
    out["n_users"] = int(len(r))
    return out


def uniform_negatives(params: Mapping) -> int:
    """n of the uniform-negatives HR@K: as many negatives as the candidate sets hold."""
    return int(params["testset"]["n_candidates"]) - 1


def domain_scorer(model, max_elements: int = 1 << 24) -> ScoreUsers:
    """Scores of every item for a batch of users from a domain model (`DomainModel.score_all`: a
    matrix product for dot-product models, the model's own logit otherwise, so NCF's MLP works as
    in training), in chunks of users. Call it inside `model.inference()` to compute a LightGCN
    propagation once for the whole ranking rather than once per call."""
    # a dot-product model holds [step, n_items] scores at a time, another [step, n_items, dim] too
    step = max(1, max_elements // max(1, model.n_items * (1 if model.dot_product else max(model.dim, 1))))

    def score(users: np.ndarray) -> np.ndarray:
        out = []
        with model.inference():
            for s in range(0, len(users), step):
                out.append(model.score_all(users[s:s + step]).double().cpu().numpy())
        return np.concatenate(out)
    return score


def not_ranked(params: Mapping, reason: str) -> dict:
    """The `full` entry of a run whose method cannot rank the whole catalogue here (empty without
    eval.mode full)."""
    return {"full": {"not_applicable": reason}} if params["eval"].get("mode") == "full" else {}


def full_users(ds, params: Mapping) -> np.ndarray:
    """The users ranked on the full catalogue: the candidate sets' top-K users."""
    ev = params["eval"]
    return ds.eval_users(ev.get("topk_users") or ev.get("max_users"))


def full_ks(params: Mapping) -> Sequence[int]:
    return params["eval"].get("full_ks") or (10, 20)


def evaluate_full(score_users: ScoreUsers, ds, params: Mapping, split: str = "test",
                  progress: bool = False) -> dict:
    """The `full` entry of metrics.json for `params.eval` (the same users as the candidate sets)."""
    users = full_users(ds, params)
    ranks = full_ranks(score_users, ds, split, users, seed=int(params["seed"]), progress=progress)
    return {"split": split, "n_items": int(ds.n_items),
            **full_metrics(ranks.to_numpy(), full_ks(params), ranked_pool(ds, split, users), uniform_negatives(params))}
