"""The full-catalogue ranking table (`eval.mode: full`, docs/protocol.md §3): Recall@K and NDCG@K
of every stored run side that ranked the whole catalogue, and the methods that say it is not
applicable to them. With one held-out item a user, Recall@K is a share of users, so its interval
is the Wilson score interval of a binomial proportion; NDCG@K is given as measured, and so is the
expected HR@K against uniform negatives (`full_ranking.uniform_hr`, runs evaluated after it was
added; "–" for older ones)."""
from __future__ import annotations

import math

import pandas as pd
from scipy.stats import norm


def wilson(p: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The Wilson score interval of a proportion p observed on n trials."""
    if n <= 0:
        return (math.nan, math.nan)
    z = float(norm.ppf(1 - alpha / 2))
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def _cut(key: str) -> int:
    return int(key.split("@")[1])


def full_ranking_table(runs: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """One row per stored run side with a `full` entry: dataset, batch, method, data setting,
    users, Recall@K [CI] and NDCG@K, and for BDLM-drs its first stage's Recall@K; "not applicable"
    rows say why."""
    if runs.empty or "full" not in runs:
        return pd.DataFrame()
    rows = []
    for _, r in runs[runs["full"].map(lambda f: isinstance(f, dict))].iterrows():
        f = r["full"]
        row = {"dataset": r["dataset"], "batch": r["batch"], "method": r["label"], "seed": r["seed"],
               "setting": r["setting"]}
        if "not_applicable" in f:
            rows.append({**row, "users": None, "note": f"not applicable: {f['not_applicable']}"})
            continue
        n = int(f.get("n_users") or 0)
        row["users"] = n
        for k in sorted((k for k in f if k.startswith("Recall@")), key=_cut):
            lo, hi = wilson(float(f[k]), n, alpha)
            row[k] = f"{f[k]:.3f} [{lo:.3f}, {hi:.3f}]"
        for k in sorted((k for k in f if k.startswith("NDCG@")), key=_cut):
            row[k] = f"{f[k]:.3f}"
        for k in ("HR@1 uniform", "HR@2 uniform"):   # expected, against testset.n_candidates - 1 uniform negatives
            row[f"{k.split()[0]} vs uniform negatives"] = f"{f[k]:.3f}" if k in f else "–"
        first = f.get("first_stage")
        row["note"] = (f"re-ranks the top {f.get('rerank_n')} of its {first.get('model')} first stage "
                       "(first stage: " + ", ".join(f"{k} {first[k]:.3f}" for k in first if k.startswith(("Recall@", "NDCG@")))
                       + ")") if isinstance(first, dict) else ""
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    cols = ["dataset", "batch", "method", "seed", "setting", "users",
            *[c for c in out.columns if c.startswith(("Recall@", "NDCG@", "HR@"))], "note"]
    return out[cols].sort_values(["dataset", "batch", "setting", "method"], kind="stable").reset_index(drop=True)
