"""The sparsity study in the report: HR@1 against training density, and by bucket.

Its runs are those of batches named `sparsity*` (params/batches/cpu_sparsity_*.yaml): the same
users and candidate sets at every `data.train_keep` / `data.cold_items` value (data/sparsity.py),
so each setting's methods, and each method across settings, are paired on the same users. Per
(dataset, setting): HR@1 with 95% bootstrap CIs for every method; BDLM-drs and BDLM-llm against
LightGCN, and BDLM-drs against its control LightGCN-FT (LightGCN fine-tuned on the same prompt
candidates without the LLM: what the LLM adds beyond the extra training), with the exact McNemar
test; and the same by bucket of the held-out item's training popularity and of the user's history
length (the labels every evaluation stores with its predictions).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .collect import choose_runs
from .records import user_table
from .statistics import bootstrap_stats, paired_test, summarise

PAIRS = [("BDLM-drs", "LightGCN"), ("BDLM-llm", "LightGCN"), ("BDLM-drs", "LightGCN-FT")]
ORDER = ["LightGCN", "LightGCN-FT", "InstructRec", "BDLM-llm", "BDLM-drs"]
BREAKDOWNS = ("item_popularity", "user_history")


def density(setting: str) -> float:
    """train_keep of a setting label ('default' = 1.0; a count per user is its own value)."""
    for part in setting.split(", "):
        if part.startswith("keep "):
            return float(part.split()[1])
    return 1.0


def setting_order(setting: str) -> tuple:
    """Rows in reading order: the default, the most-recent thinnings from dense to sparse, then the
    other knobs (uniform thinning, cold items)."""
    kind = 0 if setting == "default" else 1 if "uniform" not in setting and "cold" not in setting else 2
    return kind, -density(setting), setting


def sparsity_summary(runs: pd.DataFrame, lambda_ml: float, n_boot: int, alpha: float):
    """(summary with `setting` and `density` columns, {(dataset, setting, label): {seed: per-user
    table}}, the chosen runs with their `setting`)."""
    runs = runs[runs["batch"].astype(str).str.startswith("sparsity")]
    parts, tables, chosen_all = [], {}, []
    for setting, g in runs.groupby("setting", sort=False):
        chosen = choose_runs(g, lambda_ml)
        if chosen.empty:
            continue
        s, t = summarise(chosen, n_boot, alpha)
        parts.append(s.assign(setting=setting, density=density(setting)))
        tables.update({(ds, setting, label): v for (ds, label), v in t.items()})
        chosen_all.append(chosen.assign(setting=setting))
    if not parts:
        return pd.DataFrame(), tables, pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    order = out["setting"].map(setting_order)
    out = out.assign(_o=order).sort_values(["dataset", "_o"], kind="stable").drop(columns="_o")
    return out, tables, pd.concat(chosen_all, ignore_index=True)


def sparsity_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows (dataset, setting), a column per method: HR@1 [CI]."""
    if summary.empty:
        return summary
    rows = []
    for (ds, setting), g in summary.groupby(["dataset", "setting"], sort=False):
        s = g.set_index("label")
        row = {"dataset": ds, "setting": setting}
        for label in [m for m in ORDER if m in s.index] + sorted(set(s.index) - set(ORDER)):
            r = s.loc[label]
            ci = f" [{r['HR@1 lo']:.3f}, {r['HR@1 hi']:.3f}]" if "HR@1 lo" in r and not pd.isna(r["HR@1 lo"]) else ""
            row[label] = f"{r['HR@1']:.3f}{ci}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("–")


def sparsity_tests(summary: pd.DataFrame, tables: dict, n_boot: int, alpha: float) -> pd.DataFrame:
    """Each pair of PAIRS per (dataset, setting): ΔHR@1 [CI], wins/losses, p."""
    rows = []
    for (ds, setting) in dict.fromkeys(zip(summary.get("dataset", []), summary.get("setting", []))):
        for ours, base in PAIRS:
            a, b = tables.get((ds, setting, ours)), tables.get((ds, setting, base))
            if a is None or b is None:
                continue
            t = paired_test(a, b, n_boot, alpha)
            rows.append({"dataset": ds, "setting": setting, "comparison": f"{ours} vs {base}",
                         "n_users": t["n_users"], "ΔHR@1": round(t["HR@1"]["delta"], 4),
                         "Δ lo": round(t["HR@1"]["ci"][0], 4), "Δ hi": round(t["HR@1"]["ci"][1], 4),
                         "wins": t["HR@1"]["wins"], "losses": t["HR@1"]["losses"],
                         "p (McNemar exact)": round(t["HR@1"]["p_mcnemar"], 4)})
    return pd.DataFrame(rows)


def gap_change(tables: dict, n_boot: int, alpha: float, seed: int = 0) -> pd.DataFrame:
    """Does BDLM's gap to LightGCN change as the data thins? Per (dataset, setting other than
    default) and pair of PAIRS: the HR@1 gap (ours - LightGCN) at the default setting and at this
    one, and its change, with a bootstrap CI over the users both settings rank (the same users:
    the test sets do not depend on the knobs), resampled within each seed both settings have."""
    rows = []
    for ds, setting in sorted({(k[0], k[1]) for k in tables if k[1] != "default"},
                              key=lambda k: (k[0], setting_order(k[1]))):
        for o, base in PAIRS:
            keys = [(ds, "default", o), (ds, "default", base), (ds, setting, o), (ds, setting, base)]
            if not all(k in tables for k in keys):
                continue
            # seeded per row, as paired_test is per call: a setting or pair added later leaves the
            # other rows' CIs as they are
            rng = np.random.default_rng(seed)
            seeds = sorted(set.intersection(*(set(tables[k]) for k in keys)))
            per_seed, reps, n = [], [], 0
            for s_ in seeds:
                users = tables[keys[0]][s_].index
                for k in keys[1:]:
                    users = users.intersection(tables[k][s_].index)
                h = [tables[k][s_].loc[users, "hit1"].to_numpy() for k in keys]
                gaps = np.stack([h[0] - h[1], h[2] - h[3]], axis=1)            # [users, 2]
                n += len(users)
                w = rng.multinomial(len(users), np.full(len(users), 1.0 / len(users)), size=n_boot)
                per_seed.append(gaps.mean(0))
                reps.append((w @ (gaps[:, 1] - gaps[:, 0])) / len(users))
            if not seeds:
                continue
            g = np.mean(per_seed, axis=0)
            lo, hi = np.quantile(np.mean(reps, axis=0), [alpha / 2, 1 - alpha / 2])
            rows.append({"dataset": ds, "setting": setting, "comparison": f"{o} vs {base}", "n_seeds": len(seeds),
                         "n_users": n, "gap at default": round(float(g[0]), 4),
                         "gap here": round(float(g[1]), 4), "change": round(float(g[1] - g[0]), 4),
                         "change lo": round(float(lo), 4), "change hi": round(float(hi), 4)})
    return pd.DataFrame(rows)


def _bucketed(run_dir: str, side: str, threshold) -> pd.DataFrame | None:
    """Per-user hits (`records.user_table`) with the user's two bucket labels, or None (a run
    evaluated before its predictions carried them)."""
    t = user_table(run_dir, side, threshold) if threshold is not None else None
    return t if t is not None and set(BREAKDOWNS) <= set(t.columns) else None


def bucket_table(chosen: pd.DataFrame, n_boot: int, alpha: float, breakdown: str = "item_popularity") -> pd.DataFrame:
    """Per (dataset, setting, bucket) of the chosen runs (`sparsity_summary`): each method's HR@1
    [CI] and n, and the paired tests of PAIRS on that bucket's users."""
    per: dict = {}
    for (ds, setting, label), grp in (chosen.groupby(["dataset", "setting", "label"]) if len(chosen) else ()):
        frames = {row["seed"]: _bucketed(row["run_dir"], row["side"], row["threshold"]) for _, row in grp.iterrows()}
        if all(f is not None for f in frames.values()):
            per[(ds, setting, label)] = frames
    rows = []
    for ds, setting in sorted({(k[0], k[1]) for k in per}, key=lambda k: (k[0], setting_order(k[1]))):
        labels = [m for m in ORDER if (ds, setting, m) in per]
        buckets = sorted({b for m in labels for f in per[(ds, setting, m)].values() for b in f[breakdown].unique()},
                         key=lambda b: int(str(b).split("-")[0].rstrip("+")))
        for b in buckets:
            row = {"dataset": ds, "setting": setting, breakdown: b}
            for m in labels:
                sub = [f[f[breakdown] == b] for f in per[(ds, setting, m)].values()]
                sub = [x for x in sub if len(x)]
                if not sub:
                    continue
                reps = bootstrap_stats(sub, n_boot)[:, 0]
                lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
                row[m] = f"{np.mean([x['hit1'].mean() for x in sub]):.3f} [{lo:.3f}, {hi:.3f}]"
                row[f"n {m}"] = int(sum(len(x) for x in sub))
            for ours, base in PAIRS:
                if (ds, setting, ours) in per and (ds, setting, base) in per:
                    a = {s: f[f[breakdown] == b] for s, f in per[(ds, setting, ours)].items()}
                    c = {s: f[f[breakdown] == b] for s, f in per[(ds, setting, base)].items()}
                    if all(len(x) for x in a.values()) and all(len(x) for x in c.values()):
                        t = paired_test(a, c, n_boot, alpha)
                        row[f"p {ours} vs {base}"] = round(t["HR@1"]["p_mcnemar"], 4)
            rows.append(row)
    return pd.DataFrame(rows).fillna("–") if rows else pd.DataFrame()


def sparsity_figure(summary: pd.DataFrame):
    """HR@1 against train_keep per method (95% CI bands), a panel per dataset; settings with cold
    items or uniform thinning are left to the tables (a line joins the `recent` points only)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    if summary.empty:
        return None
    d = summary[~summary["setting"].str.contains("cold|uniform")]
    if d["density"].nunique() < 2:
        return None
    sns.set_theme(style="whitegrid")
    datasets = list(dict.fromkeys(d["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        g = d[d["dataset"] == ds]
        for k, label in enumerate([m for m in ORDER if m in set(g["label"])]):
            s = g[g["label"] == label].sort_values("density")
            ax.plot(s["density"], s["HR@1"], marker="o", label=label, color=f"C{k}")
            if "HR@1 lo" in s:
                ax.fill_between(s["density"], s["HR@1 lo"].astype(float), s["HR@1 hi"].astype(float),
                                alpha=0.15, color=f"C{k}")
        ax.set_xscale("log")
        ax.set_xlabel("train_keep (fraction of each user's training interactions)")
        ax.set_ylabel("HR@1")
        ax.set_title(ds)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("HR@1 against training density (95% bootstrap CI)", y=1.03)
    return fig
