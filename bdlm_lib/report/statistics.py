"""The report's statistics: per-user hits, percentile bootstrap CIs over users, and the paired
exact McNemar test.

Uncertainty: every HR@k / F1 gets a 95% percentile bootstrap CI by resampling *users* (a user's 20
candidates / binary pairs move together); with several seeds, users are resampled within each seed
and the seeds' statistics averaged. Significance: BDLM against the best baseline on the same users —
exact McNemar test (two-sided binomial on the discordant users) on per-user HR@1 / HR@2 hits, and a
paired bootstrap CI of the difference (HR@1, HR@2, F1). With several seeds the test runs on the seeds
both rows have: wins and losses are summed over them (a stratified exact McNemar test: each seed
draws its own evaluated users, candidates and training randomness; a user that two seeds both draw
counts in both), the difference is the mean of the seeds' differences and its CI resamples users
within each seed.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..methods import BASELINE_ROWS, BDLM_ROWS
from .collect import CI_METRICS, METRICS
from .records import user_table


def _stats(sums: np.ndarray, n: np.ndarray) -> np.ndarray:
    """[..., 5] column sums (hit1, hit2, tp, fp, fn) -> [..., 3] (HR@1, HR@2, F1)."""
    tp, fp, fn = sums[..., 2], sums[..., 3], sums[..., 4]
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return np.stack([sums[..., 0] / n, sums[..., 1] / n, f1], axis=-1)


def bootstrap_stats(tables: list[pd.DataFrame], n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """[n_boot, 3] bootstrap replicates of (HR@1, HR@2, F1): users resampled within each table
    (one per seed), statistics averaged over the tables. Multinomial weights keep it vectorised."""
    rng = np.random.default_rng(seed)
    reps = []
    for t in tables:
        x = t[["hit1", "hit2", "tp", "fp", "fn"]].to_numpy()
        w = rng.multinomial(len(x), np.full(len(x), 1.0 / len(x)), size=n_boot).astype(float)
        reps.append(_stats(w @ x, float(len(x))))
    return np.mean(reps, axis=0)


def _ci(reps: np.ndarray, alpha: float) -> np.ndarray:
    return np.quantile(reps, [alpha / 2, 1 - alpha / 2], axis=0)  # [2, k]


def paired_test(a, b, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """a vs b on their common users: exact McNemar p on HR@1/HR@2 hits; paired bootstrap CI of Δ.

    a and b are per-user tables (`per_user`), or dicts seed -> table: then the seeds both have are
    strata — wins and losses summed over them, Δ the mean of the seeds' Δ, users resampled within
    each seed (`n_seeds` says how many were used)."""
    from scipy.stats import binomtest
    a_by, b_by = (x if isinstance(x, dict) else {None: x} for x in (a, b))
    seeds = [s for s in a_by if s in b_by]
    if not seeds:
        raise ValueError("paired_test: the two rows have no seed in common")
    cols = ["hit1", "hit2", "tp", "fp", "fn"]
    rng = np.random.default_rng(seed)
    out: dict = {"n_users": 0, "n_seeds": len(seeds), "F1": {"n_users": 0},
                 "HR@1": {"wins": 0, "losses": 0}, "HR@2": {"wins": 0, "losses": 0}}
    deltas, points = [], []
    for s in seeds:
        users = a_by[s].index.intersection(b_by[s].index)
        x, y = a_by[s].loc[users], b_by[s].loc[users]
        out["n_users"] += int(len(users))
        # F1 is over the users both scored on the binary task (a nested subset when
        # eval.topk_users > max_users); the others add zeros to its counts
        out["F1"]["n_users"] += int(((x["n_binary"] > 0) & (y["n_binary"] > 0)).sum())
        for k, col in ((1, "hit1"), (2, "hit2")):
            out[f"HR@{k}"]["wins"] += int(((x[col] == 1) & (y[col] == 0)).sum())
            out[f"HR@{k}"]["losses"] += int(((x[col] == 0) & (y[col] == 1)).sum())
        w = rng.multinomial(len(users), np.full(len(users), 1.0 / len(users)), size=n_boot).astype(float)
        deltas.append(_stats(w @ x[cols].to_numpy(), len(users)) - _stats(w @ y[cols].to_numpy(), len(users)))
        points.append(_stats(x[cols].to_numpy().sum(0), len(users)) - _stats(y[cols].to_numpy().sum(0), len(users)))
    for k in (1, 2):
        t = out[f"HR@{k}"]
        n = t["wins"] + t["losses"]
        t["p_mcnemar"] = float(binomtest(t["wins"], n, 0.5).pvalue) if n else 1.0
    lo, hi = _ci(np.mean(deltas, axis=0), alpha)
    point = np.mean(points, axis=0)
    for j, m in enumerate(CI_METRICS):
        out.setdefault(m, {}).update({"delta": float(point[j]), "ci": [float(lo[j]), float(hi[j])]})
    return out


def summarise(chosen: pd.DataFrame, n_boot: int, alpha: float) -> tuple[pd.DataFrame, dict]:
    """Point estimates (mean over seeds of metrics.json) and CIs per (dataset, label); also the
    per-user tables, for the paired tests."""
    rows, tables = [], {}
    for (ds, label), g in chosen.groupby(["dataset", "label"], sort=False):
        row = {"dataset": ds, "label": label, "n_seeds": len(g), "preset": g["preset"].iloc[0],
               "lambda_ml": g["lambda_ml"].iloc[0], "runs": ";".join(g["run_dir"])}
        for m in METRICS:
            row[m] = float(g[m].astype(float).mean())
        per = []
        for _, run in g.iterrows():
            t = user_table(run["run_dir"], run["side"], run["threshold"]) if run["threshold"] is not None else None
            if t is not None:
                per.append(t)
        if per and len(per) == len(g):
            # rows may rank different numbers of users (eval.topk_users per method): say how many
            row["users"] = f"{len(per[0])} / {int((per[0]['n_binary'] > 0).sum())}"
            lo, hi = _ci(bootstrap_stats(per, n_boot), alpha)
            for j, m in enumerate(CI_METRICS):
                row[f"{m} lo"], row[f"{m} hi"] = float(lo[j]), float(hi[j])
            tables[(ds, label)] = dict(zip(g["seed"], per))   # seed -> per-user table, for the paired tests
        rows.append(row)
    return pd.DataFrame(rows), tables


def improvement(summary: pd.DataFrame, metrics: list[str]) -> tuple[dict, dict]:
    """Per dataset and metric: (best BDLM - best baseline) / best baseline, and which rows."""
    imp, which = {}, {}
    for ds, s in summary.groupby("dataset", sort=False):
        s = s.set_index("label")
        # paper order, so that a tie picks the same row every time
        base = s.loc[[r for r in BASELINE_ROWS if r in s.index]]
        ours = s.loc[[r for r in BDLM_ROWS if r in s.index]]
        for m in metrics:
            if base[m].notna().any() and ours[m].notna().any():
                b, o = base[m].idxmax(), ours[m].idxmax()
                imp[f"{ds} {m}"] = (ours.loc[o, m] - base.loc[b, m]) / base.loc[b, m] if base.loc[b, m] else float("nan")
                which[(ds, m)] = (o, b)
    return imp, which


# besides BDLM vs the best baseline: each BDLM-drs against its own domain model and against the
# control that fine-tunes that model on the same prompt candidates without the LLM
DRS_PAIRS = [("BDLM-drs", "LightGCN", "vs its domain model"), ("BDLM-drs", "LightGCN-FT", "vs the control"),
             ("BDLM-NCF-drs", "NCF", "vs its domain model"), ("BDLM-NCF-drs", "NCF-FT", "vs the control")]


def significance(summary: pd.DataFrame, tables: dict, which: dict, n_boot: int, alpha: float) -> pd.DataFrame:
    rows = []
    for ds in dict.fromkeys(summary["dataset"]):
        pairs = [(*which[(ds, "HR@1")], "vs best baseline")] if (ds, "HR@1") in which else []
        pairs += [p for p in DRS_PAIRS if p[:2] not in [q[:2] for q in pairs]]   # no row twice
        for ours, base, what in pairs:
            a, b = tables.get((ds, ours)), tables.get((ds, base))
            if a is None or b is None:
                continue
            t = paired_test(a, b, n_boot, alpha)
            for m in CI_METRICS:
                rows.append({"dataset": ds, "comparison": what, "BDLM": ours, "best baseline": base, "metric": m,
                             "n_seeds": t["n_seeds"], "n_users": t[m].get("n_users", t["n_users"]),
                             "delta": t[m]["delta"], "delta lo": t[m]["ci"][0], "delta hi": t[m]["ci"][1],
                             "wins": t.get(m, {}).get("wins"), "losses": t.get(m, {}).get("losses"),
                             "p (McNemar exact)": t.get(m, {}).get("p_mcnemar")})
    return pd.DataFrame(rows)
