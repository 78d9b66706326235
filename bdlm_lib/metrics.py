"""One metrics module for every model (paper §5.1.2).

Top-K: each user has a group of candidates with exactly one positive; HR@k = share of users whose
positive ranks in the top k, NDCG@k = mean of 1/log2(rank+2) within the top k. Ties are broken
by the candidate's stored (seed-shuffled) position, so a constant scorer gets chance-level HR.

Breakdowns: the same top-K metrics by bucket of the held-out item's number of training
interactions (`item_popularity`) and of the user's training-history length (`user_history`);
the buckets of one evaluation partition its users, so n-weighted bucket means give the totals.

Binary: the decision threshold is the one maximising F1 on the validation set, then applied to
test; precision/recall/F1 of the positive class and AUC come from scikit-learn.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (f1_score, precision_recall_curve, precision_score, recall_score,
                             roc_auc_score)

from .store import LATER_KEYS

ScoreFn = Callable[[pd.DataFrame], np.ndarray]


def positive_ranks(frame: pd.DataFrame, scores: np.ndarray) -> pd.Series:
    """0-based rank of each user's positive among its candidates (index: user)."""
    df = pd.DataFrame({
        "user": frame["user"].to_numpy(),
        "label": frame["label"].to_numpy(),
        "position": frame["position"].to_numpy() if "position" in frame else np.arange(len(frame)),
        "score": np.asarray(scores, dtype=np.float64),
    })
    if np.isnan(df["score"]).any():
        raise ValueError("scores contain NaN")
    counts = df.groupby("user")["label"].sum()
    if not (counts == 1).all():
        bad = counts[counts != 1].index[:3].tolist()
        raise ValueError(f"each user needs exactly one positive candidate (users {bad})")
    df = df.sort_values(["user", "score", "position"], ascending=[True, False, True], kind="stable")
    df["rank"] = df.groupby("user").cumcount()
    return df.loc[df["label"] == 1].set_index("user")["rank"]


def hit_ratio(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(np.asarray(ranks) < k))


def ndcg(ranks: np.ndarray, k: int) -> float:
    r = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)))


def topk_metrics(frame: pd.DataFrame, scores: np.ndarray, ks: Sequence[int] = (1, 2, 5, 10)) -> dict:
    return rank_metrics(positive_ranks(frame, scores).to_numpy(), ks)


def rank_metrics(ranks: np.ndarray, ks: Sequence[int] = (1, 2, 5, 10)) -> dict:
    """HR@k, NDCG@k, MRR and n_users of 0-based positive ranks (one per user)."""
    ranks = np.asarray(ranks)
    out = {}
    for k in ks:
        out[f"HR@{k}"] = hit_ratio(ranks, k)
    for k in ks:
        out[f"NDCG@{k}"] = ndcg(ranks, k)
    out["MRR"] = float(np.mean(1.0 / (ranks + 1.0)))
    out["n_users"] = int(len(ranks))
    return out


# --- breakdowns -----------------------------------------------------------------------------

# the schema's defaults (params/base.yaml), as stored runs made before these keys existed read them
DEFAULT_BUCKETS = {"item_popularity": tuple(LATER_KEYS["eval.item_buckets"]),
                   "user_history": tuple(LATER_KEYS["eval.user_buckets"])}


def bucket_edges(params: Mapping | None) -> dict:
    """The lower bucket edges of `params.eval` (item_buckets, user_buckets), else the defaults."""
    ev = (params or {}).get("eval") or {}
    return {"item_popularity": tuple(ev.get("item_buckets") or DEFAULT_BUCKETS["item_popularity"]),
            "user_history": tuple(ev.get("user_buckets") or DEFAULT_BUCKETS["user_history"])}


def bucket_labels(values: np.ndarray, edges: Sequence[int]) -> np.ndarray:
    """Label of each value's bucket: edges (0, 1, 5, 20) -> '0', '1-4', '5-19', '20+'. Values
    under the first edge go to the first bucket."""
    edges = sorted(int(e) for e in edges)
    names = [(str(a) if b - a == 1 else f"{a}-{b - 1}") for a, b in zip(edges, edges[1:])] + [f"{edges[-1]}+"]
    idx = np.clip(np.searchsorted(edges, np.asarray(values), side="right") - 1, 0, len(edges) - 1)
    return np.asarray(names, dtype=object)[idx]


def held_out_items(ds, split: str, users: np.ndarray) -> np.ndarray:
    """Each user's held-out item of `split` (valid / test), in the order of `users`."""
    return getattr(ds, split).set_index("user")["item"].reindex(users).to_numpy()


def user_buckets(ds, users: np.ndarray, split: str, edges: Mapping) -> pd.DataFrame:
    """Per user (index): the bucket of the held-out item's train count and of the history length."""
    counts = np.bincount(ds.train["item"].to_numpy(), minlength=ds.n_items)
    hist = np.bincount(ds.train["user"].to_numpy(), minlength=ds.n_users)
    held = held_out_items(ds, split, users)
    return pd.DataFrame({"item_popularity": bucket_labels(counts[held], edges["item_popularity"]),
                         "user_history": bucket_labels(hist[users], edges["user_history"])},
                        index=pd.Index(users, name="user"))


def bucket_metrics(ranks: pd.Series, buckets: pd.DataFrame, ks: Sequence[int], edges: Mapping) -> dict:
    """{breakdown: {bucket: rank_metrics}} (every bucket listed, empty ones with n_users 0)."""
    out: dict = {}
    b = buckets.reindex(ranks.index)
    for name in ("item_popularity", "user_history"):
        table = {}
        for lab in bucket_labels(np.asarray(sorted(edges[name])), edges[name]):
            r = ranks.to_numpy()[(b[name] == lab).to_numpy()]
            table[str(lab)] = rank_metrics(r, ks) if len(r) else {"n_users": 0}
        out[name] = table
    out["edges"] = {k: [int(e) for e in v] for k, v in edges.items()}
    return out


def choose_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising F1 of the positive class (predict 1 when score >= t)."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if len(np.unique(labels)) != 2:
        raise ValueError("choose_threshold needs validation labels of both classes (0 and 1)")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = np.divide(2 * precision * recall, precision + recall,
                   out=np.zeros_like(precision), where=(precision + recall) > 0)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(thresholds[best]) if len(thresholds) else 0.5


def binary_metrics(test_labels: np.ndarray, test_scores: np.ndarray, threshold: float) -> dict:
    y = np.asarray(test_labels)
    s = np.asarray(test_scores, dtype=np.float64)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    pred = (s >= threshold).astype(int)
    return {
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "auc": float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan"),
        "threshold": float(threshold),
        "n": int(len(y)),
    }


def evaluate(score_fn: ScoreFn, ds, split: str = "test", max_users: int | None = None,
             ks: Sequence[int] = (1, 2, 5, 10), return_predictions: bool = False,
             topk_users: int | None = None, buckets: Mapping | None = None):
    """Score `ds`'s persisted candidate sets with `score_fn(frame) -> scores` (higher = better).

    `frame` has columns user, item, label (and position for top-K). Returns the metrics.json
    layout: {"topk": {...}, "binary": {...}, "split", "max_users", "topk_users"}; the binary
    threshold is chosen on the validation binary set of the same users. With `return_predictions`,
    also a long frame of (task, split, user, item, label, score) for per-user analysis (bootstrap
    CIs, paired tests).
    `topk_users` (None: max_users) ranks more users than the binary task scores: a top-K prompt
    costs an LLM one pass, a user's four binary prompts (valid + test) more, and HR@1 is the
    metric whose CIs decide a comparison. The seeded subsets are nested (the first n of one
    permutation), so the max_users users are among the topk_users ones.
    `buckets` (lower edges, as `bucket_edges(params)` gives them; None: the defaults) make the
    `buckets` entry; the predictions carry each user's two bucket labels.
    """
    n_topk = max_users if topk_users is None else topk_users
    topk = ds.topk(split, max_users=n_topk)
    t_scores = np.asarray(score_fn(topk), dtype=np.float64)
    vbin = ds.binary("valid", max_users=max_users)
    if split != "valid":
        # one frame for both splits: an LLM then shares each user's history prefix over all
        # four of the user's binary prompts (llm.scoring.shared_prefix_hidden)
        tbin = ds.binary(split, max_users=max_users)
        both = np.asarray(score_fn(pd.concat([vbin, tbin], ignore_index=True)), dtype=np.float64)
        v_scores, b_scores = both[:len(vbin)], both[len(vbin):]
    else:
        tbin = vbin
        v_scores = b_scores = np.asarray(score_fn(vbin), dtype=np.float64)
    threshold = choose_threshold(vbin["label"].to_numpy(), v_scores)
    ranks = positive_ranks(topk, t_scores)
    edges = dict(buckets) if buckets is not None else bucket_edges(None)
    labels = user_buckets(ds, ranks.index.to_numpy(), split, edges)
    metrics = {
        "split": split,
        "max_users": max_users,
        "topk_users": n_topk,
        "topk": rank_metrics(ranks.to_numpy(), ks),
        "binary": binary_metrics(tbin["label"].to_numpy(), b_scores, threshold),
        "buckets": bucket_metrics(ranks, labels, ks, edges),
    }
    if not return_predictions:
        return metrics
    preds = pd.concat([
        topk[["user", "item", "label"]].assign(task="topk", split=split, score=t_scores),
        tbin[["user", "item", "label"]].assign(task="binary", split=split, score=b_scores),
    ], ignore_index=True)
    per_user = labels.reindex(preds["user"].to_numpy())
    preds["item_popularity"] = per_user["item_popularity"].to_numpy()
    preds["user_history"] = per_user["user_history"].to_numpy()
    return metrics, preds


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0):
    """Percentile bootstrap CI of the mean of per-user values (e.g. hits)."""
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    means = v[idx].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))
