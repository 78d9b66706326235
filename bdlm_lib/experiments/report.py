"""The paper's tables and figures, assembled from stored run folders only (no model is loaded).

A run folder is `<output_dir>/<dataset>/<batch>/<run_id>/` with run.json (method, λ, seed, written by
the batch runner), params.yaml, metrics.json and, when the notebook saved it, predictions.parquet —
the long frame (task, split, user, item, label, score) of `metrics.evaluate(..., return_predictions=True)`.
Two-sided joint runs (BDLM) write metrics.json as {"llm": <evaluate layout>, "drs": <evaluate layout>}
and predictions with a `side` column (or predictions_llm.parquet / predictions_drs.parquet).

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

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..runs import atomic_write_bytes, atomic_write_text, read_json, write_json

# method -> row label per side ("main" = a one-sided metrics.json); names as in the paper
LABELS = {
    "llmrec": {"main": "LLM-Rec"}, "instructrec": {"main": "InstructRec"}, "gpt4sm": {"main": "GPT4SM"},
    "ncf": {"main": "NCF"}, "gmf": {"main": "GMF"}, "mf": {"main": "GMF"}, "lightgcn": {"main": "LightGCN"},
    "sasrec": {"main": "SASRec"}, "gru4rec": {"main": "GRU4Rec"}, "bert4rec": {"main": "BERT4Rec"},
    "bdlm": {"llm": "BDLM-llm", "drs": "BDLM-drs", "main": "BDLM-drs"},
    "bdlm_ncf": {"llm": "BDLM-NCF-llm", "drs": "BDLM-NCF-drs", "main": "BDLM-NCF-drs"},
    "ncf_ft": {"main": "NCF-FT"}, "lightgcn_ft": {"main": "LightGCN-FT"},
    "wo_jl": {"llm": "w/o JL-llm", "drs": "w/o JL-drs", "main": "w/o JL"},
    "wo_pe": {"llm": "w/o PE-llm", "drs": "w/o PE-drs", "main": "w/o PE"},
    "wo_et": {"llm": "w/o ET-llm", "drs": "w/o ET-drs", "main": "w/o ET"},
}
BASELINES = ["LLM-Rec", "InstructRec", "GPT4SM", "NCF", "GMF", "LightGCN", "SASRec", "GRU4Rec", "BERT4Rec"]
BDLM_ROWS = ["BDLM-llm", "BDLM-drs"]
NCF_ROWS = ["NCF", "NCF-FT", "BDLM-NCF-llm", "BDLM-NCF-drs"]
# controls (bdlm_lib/joint/control.py): listed after the baselines, not counted as one in Improv.
CONTROLS = ["LightGCN-FT"]
ABLATIONS = ["w/o ET", "w/o PE", "w/o JL", "BDLM"]
METRICS = ["HR@1", "HR@2", "precision", "recall", "F1"]
CI_METRICS = ["HR@1", "HR@2", "F1"]
PRESET_RANK = {"paper": 4, "cpu": 3, "demo": 2, "smoke": 1}


# ----------------------------------------------------------------------------- collecting runs
def _sides(metrics: dict) -> dict[str, dict]:
    """{"llm": .., "drs": ..} for a two-sided run (joint/run.py also copies drs to the top level),
    else {"main": metrics}."""
    sides = {s: metrics[s] for s in ("llm", "drs") if isinstance(metrics.get(s), dict) and "topk" in metrics[s]}
    return sides or ({"main": metrics} if "topk" in metrics else {})


def _run_info(run_dir: Path) -> dict | None:
    """run.json (batch runs), else infer from the contract's standalone layout (domain/<model>/)."""
    # a batch run's run.json names its method; a standalone joint run's holds only its fingerprint
    info = read_json(run_dir / "run.json") if (run_dir / "run.json").exists() else {}
    params = {}
    if (run_dir / "params.yaml").exists():
        params = yaml.safe_load((run_dir / "params.yaml").read_text(encoding="utf-8")) or {}
    if "method" not in info:   # standalone: domain/<model>/, or bdlm/<variant>/ (its params say which)
        if run_dir.parent.name == "domain":
            info = {"method": run_dir.name}
        elif run_dir.parent.name == "bdlm":
            from ..joint.run import joint_method
            info = {"method": joint_method(params) if params.get("joint") else "bdlm"}
        else:
            return None
    info.setdefault("preset", params.get("preset"))
    info.setdefault("seed", params.get("seed"))
    if info.get("lambda_ml") is None and info["method"] in ("bdlm", "bdlm_ncf", "wo_pe", "wo_et"):
        info["lambda_ml"] = (params.get("joint") or {}).get("lambda_ml")
    return info


def collect_runs(output_dir: str | Path) -> pd.DataFrame:
    """One row per (run, side) with a known method: dataset, label, λ, seed, preset, metrics, run_dir."""
    rows = []
    for mfile in sorted(Path(output_dir).glob("*/*/*/metrics.json")):
        run_dir = mfile.parent
        info = _run_info(run_dir)
        if not info or info.get("method") not in LABELS:
            continue
        metrics = read_json(mfile)
        for side, m in _sides(metrics).items():
            label = LABELS[info["method"]].get(side)
            if label is None:
                continue
            if info.get("flag") not in (None, "none"):   # e.g. "InstructRec+aux": its own row
                label = f"{label}+{info['flag']}"
            tk, bn = m.get("topk", {}), m.get("binary", {})
            rows.append({"dataset": run_dir.parent.parent.name, "batch": run_dir.parent.name,
                         "run_id": run_dir.name, "method": info["method"], "side": side, "label": label,
                         "lambda_ml": info.get("lambda_ml"), "seed": info.get("seed"),
                         "preset": info.get("preset"), "HR@1": tk.get("HR@1"), "HR@2": tk.get("HR@2"),
                         "precision": bn.get("precision"), "recall": bn.get("recall"), "F1": bn.get("f1"),
                         "threshold": bn.get("threshold"), "run_dir": str(run_dir),
                         "mtime": mfile.stat().st_mtime})
    return pd.DataFrame(rows, columns=["dataset", "batch", "run_id", "method", "side", "label", "lambda_ml",
                                       "seed", "preset", *METRICS, "threshold", "run_dir", "mtime"])


def load_predictions(run_dir: str | Path, side: str = "main") -> pd.DataFrame | None:
    run_dir = Path(run_dir)
    if (run_dir / f"predictions_{side}.parquet").exists():
        return pd.read_parquet(run_dir / f"predictions_{side}.parquet")
    if (run_dir / "predictions.parquet").exists():
        p = pd.read_parquet(run_dir / "predictions.parquet")
        if "side" in p:
            p = p[p["side"] == side]
            return p if len(p) else None
        return p
    return None


# ----------------------------------------------------------------------------- per-user statistics
def per_user(preds: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per-user columns hit1, hit2 (top-K), tp, fp, fn (binary at `threshold`) and n_binary (the
    user's binary rows: 0 for users ranked but not on the binary task), index user.
    Ties are broken by the stored row order (the candidates' seeded positions), as in metrics."""
    tk = preds[preds["task"] == "topk"].reset_index(drop=True)
    tk = tk.assign(order=np.arange(len(tk))).sort_values(["user", "score", "order"],
                                                          ascending=[True, False, True], kind="stable")
    tk["rank"] = tk.groupby("user").cumcount()
    rank = tk[tk["label"] == 1].set_index("user")["rank"]
    out = pd.DataFrame({"hit1": (rank < 1).astype(float), "hit2": (rank < 2).astype(float)})
    bn = preds[preds["task"] == "binary"]
    pred = bn["score"].to_numpy() >= threshold
    lab = bn["label"].to_numpy() == 1
    counts = pd.DataFrame({"user": bn["user"].to_numpy(), "tp": pred & lab, "fp": pred & ~lab,
                           "fn": ~pred & lab, "n_binary": np.ones(len(bn))}).groupby("user").sum().astype(float)
    return out.join(counts, how="left").fillna(0.0)


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


# ----------------------------------------------------------------------------- choosing runs
def one_preset(runs: pd.DataFrame, preset: str | None = None) -> pd.DataFrame:
    """The runs of `preset`, or per dataset those of its largest preset (paper > cpu > demo >
    smoke): methods are only compared on the same data sample, users and training budget."""
    if runs.empty:
        return runs
    if preset is not None:
        return runs[runs["preset"] == preset]
    rank = runs["preset"].map(PRESET_RANK).fillna(0)
    return runs[rank == rank.groupby(runs["dataset"]).transform("max")]


def choose_runs(runs: pd.DataFrame, lambda_ml: float, preset: str | None = None) -> pd.DataFrame:
    """Per (dataset, label): the runs of one preset per dataset (`one_preset`), at the λ nearest
    `lambda_ml` (joint methods), all their seeds, the newest run per seed."""
    runs = one_preset(runs, preset)
    if runs.empty:
        return runs
    r = runs.copy()
    lam = r["lambda_ml"].astype(float)
    target = math.log10(lambda_ml) if lambda_ml > 0 else -9.0
    r["lam_dist"] = np.where(lam.isna(), 0.0, np.abs(np.log10(lam.where(lam > 0, 1e-9)) - target))
    r = r.sort_values(["lam_dist", "mtime"], ascending=[True, False])
    best = r.groupby(["dataset", "label"]).head(1)[["dataset", "label", "preset", "lam_dist"]]
    r = r.merge(best, on=["dataset", "label", "preset", "lam_dist"])
    return r.drop_duplicates(["dataset", "label", "seed"]).drop(columns=["lam_dist"])


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
            p = load_predictions(run["run_dir"], run["side"])
            if p is not None and run["threshold"] is not None:
                per.append(per_user(p, float(run["threshold"])))
        if per and len(per) == len(g):
            # rows may rank different numbers of users (eval.topk_users per method): say how many
            row["users"] = f"{len(per[0])} / {int((per[0]['n_binary'] > 0).sum())}"
            lo, hi = _ci(bootstrap_stats(per, n_boot), alpha)
            for j, m in enumerate(CI_METRICS):
                row[f"{m} lo"], row[f"{m} hi"] = float(lo[j]), float(hi[j])
            tables[(ds, label)] = dict(zip(g["seed"], per))   # seed -> per-user table, for the paired tests
        rows.append(row)
    return pd.DataFrame(rows), tables


# ----------------------------------------------------------------------------- tables
def _cell(row: pd.Series, m: str) -> str:
    v = row.get(m)
    if isinstance(v, str):   # a text column (users)
        return v
    if v is None or pd.isna(v):
        return "–"
    lo, hi = row.get(f"{m} lo"), row.get(f"{m} hi")
    return f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and not pd.isna(lo) else "")


def results_table(summary: pd.DataFrame, rows: list[str], metrics: list[str]) -> pd.DataFrame:
    """Rows in paper order, columns '<dataset> <metric>', cells 'value [lo, hi]'."""
    datasets = list(dict.fromkeys(summary["dataset"]))
    out = pd.DataFrame(index=pd.Index([r for r in rows if r in set(summary["label"])], name="method"))
    for ds in datasets:
        s = summary[summary["dataset"] == ds].set_index("label")
        for m in metrics:
            out[f"{ds} {m}"] = [_cell(s.loc[r], m) if r in s.index else "–" for r in out.index]
    return out


def improvement(summary: pd.DataFrame, metrics: list[str]) -> tuple[dict, dict]:
    """Per dataset and metric: (best BDLM - best baseline) / best baseline, and which rows."""
    imp, which = {}, {}
    for ds, s in summary.groupby("dataset", sort=False):
        s = s.set_index("label")
        # paper order, so that a tie picks the same row every time
        base = s.loc[[r for r in BASELINES if r in s.index]]
        ours = s.loc[[r for r in BDLM_ROWS if r in s.index]]
        for m in metrics:
            if base[m].notna().any() and ours[m].notna().any():
                b, o = base[m].idxmax(), ours[m].idxmax()
                imp[f"{ds} {m}"] = (ours.loc[o, m] - base.loc[b, m]) / base.loc[b, m] if base.loc[b, m] else float("nan")
                which[(ds, m)] = (o, b)
    return imp, which


def table1(output_dir: Path, chosen: pd.DataFrame | None = None) -> pd.DataFrame:
    """Statistics of the prepared data samples: those the reported runs used (read from their
    params.yaml), or every prepared sample when no reported run says which it used."""
    from ..data.dataset import dataset_tag
    used = set()
    for rd in (set(chosen["run_dir"]) if chosen is not None and len(chosen) else ()):
        f = Path(rd) / "params.yaml"
        if f.exists():
            p = yaml.safe_load(f.read_text(encoding="utf-8"))
            used.add((Path(str(p["dataset"])).name, dataset_tag(p)))
    rows = []
    for man in sorted(output_dir.glob("*/data/*/manifest.json")):
        if used and (man.parent.parent.parent.name, man.parent.name) not in used:
            continue
        s = read_json(man)["stats"]
        rows.append({"dataset": man.parent.parent.parent.name, "data": man.parent.name, "#users": s["users"],
                     "#items": s["items"], "#interactions": s["interactions"],
                     "sparsity": f"{100 * s['sparsity']:.2f}%"})
    return pd.DataFrame(rows)


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


# ----------------------------------------------------------------------------- figures
def _png(fig) -> bytes:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def figure5(summary: pd.DataFrame):
    """Ablations: HR@1 (with CIs) of w/o ET, w/o PE, w/o JL and BDLM, per dataset and side."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    rows = []
    for _, r in summary.iterrows():
        base, _, side = r["label"].partition("-")
        base = "BDLM" if r["label"] in BDLM_ROWS else base
        if base in ABLATIONS and r["label"] not in ("BDLM-NCF-llm", "BDLM-NCF-drs"):
            rows.append({**r, "variant": base, "side": side or "drs"})
    df = pd.DataFrame(rows)
    if df.empty:
        return None
    datasets = list(dict.fromkeys(df["dataset"]))
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    sides = sorted(df["side"].unique())
    pal = sns.color_palette("deep", len(sides))
    for ax, ds in zip(axes[0], datasets):
        d = df[df["dataset"] == ds]
        order = [v for v in ABLATIONS if v in set(d["variant"])]
        width = 0.8 / len(sides)
        for k, side in enumerate(sides):
            s = d[d["side"] == side].set_index("variant").reindex(order)
            x = np.arange(len(order)) + (k - (len(sides) - 1) / 2) * width
            y = s["HR@1"].to_numpy(float)
            err = None
            if "HR@1 lo" in s:
                err = np.abs(np.vstack([y - s["HR@1 lo"].to_numpy(float), s["HR@1 hi"].to_numpy(float) - y]))
                err = np.nan_to_num(err)
            ax.bar(x, y, width, yerr=err, capsize=3, label=side, color=pal[k])
        ax.set_xticks(np.arange(len(order)), order)
        ax.set_title(ds)
        ax.set_ylabel("HR@1")
    axes[0][-1].legend(title="side")
    fig.suptitle("Figure 5 - ablations (95% bootstrap CI)", y=1.04)
    return fig


def figure6(runs: pd.DataFrame, n_boot: int, alpha: float, preset: str | None = None):
    """HR@1 against λ for BDLM-llm and BDLM-drs, per dataset; log x, with λ=0 drawn one decade
    left of the smallest positive λ and labelled '0' (a log axis has no 0)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    r = one_preset(runs[runs["method"] == "bdlm"].dropna(subset=["lambda_ml"]), preset)
    if r.empty or r["lambda_ml"].nunique() < 2:
        return None
    datasets = list(dict.fromkeys(r["dataset"]))
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        d = r[r["dataset"] == ds].sort_values("mtime", ascending=False).drop_duplicates(["label", "lambda_ml", "seed"])
        lams = sorted(d["lambda_ml"].astype(float).unique())
        pos = [v for v in lams if v > 0]
        zero_x = (min(pos) / 10) if pos else 1e-3
        for label, g in d.groupby("label"):
            pts = []
            for lam, gl in g.groupby("lambda_ml"):
                summ, _ = summarise(gl, n_boot, alpha)
                s = summ.iloc[0]
                pts.append((zero_x if lam == 0 else lam, s["HR@1"], s.get("HR@1 lo", np.nan), s.get("HR@1 hi", np.nan)))
            x, y, lo, hi = map(np.array, zip(*sorted(pts)))
            ax.plot(x, y, marker="o", label=label)
            if np.isfinite(lo).all():
                ax.fill_between(x, lo, hi, alpha=0.15)
        ax.set_xscale("log")
        ticks = [zero_x if v == 0 else v for v in lams]
        ax.set_xticks(ticks, ["0" if v == 0 else f"{v:g}" for v in lams])
        ax.minorticks_off()
        ax.set_xlabel("λ (lambda_ml)")
        ax.set_ylabel("HR@1")
        ax.set_title(ds)
        ax.legend()
    fig.suptitle("Figure 6 - HR@1 against λ (95% bootstrap CI)", y=1.04)
    return fig


# ----------------------------------------------------------------------------- writing
def to_markdown(df: pd.DataFrame, index: bool = True) -> str:
    if df.empty:
        return "_(no runs found)_\n"
    d = df.reset_index() if index else df
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    cols = [str(c) for c in d.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in d.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def build_report(output_dir: str | Path = "outputs", report_dir: str | Path | None = None,
                 n_boot: int | None = None, alpha: float | None = None,
                 lambda_ml: float | None = None, preset: str | None = None) -> Path:
    """Write report.md, report.html, the tables as CSV and the figures as PNG to
    `<output_dir>/report/`; return the path of report.md. Defaults from params `report:`.
    `preset`: report only the runs of that preset (None: per dataset its largest preset)."""
    from ..params import load_params
    p = load_params()
    n_boot = int(n_boot or p.report.n_boot)
    alpha = float(alpha or p.report.alpha)
    lam = float(lambda_ml if lambda_ml is not None else (p.report.lambda_ml if p.report.lambda_ml is not None
                                                         else p.joint.lambda_ml))
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"{output_dir}: no such output folder (run a batch first, or give --output-dir)")
    out = Path(report_dir) if report_dir else output_dir / "report"
    runs = collect_runs(output_dir)
    if not len(runs):
        raise ValueError(f"{output_dir}: no finished runs to report (no <dataset>/<batch>/<run>/metrics.json)")
    chosen = choose_runs(runs, lam, preset)
    summary, tables = summarise(chosen, n_boot, alpha) if len(chosen) else (pd.DataFrame(
        columns=["dataset", "label", *METRICS]), {})
    t1 = table1(output_dir, chosen)
    flagged = sorted(l for l in set(summary["label"]) if "+" in l) if len(summary) else []
    t3 = results_table(summary, BASELINES + CONTROLS + BDLM_ROWS + flagged, [*METRICS, "users"]) if len(summary) else pd.DataFrame()
    imp, which = improvement(summary, METRICS) if len(summary) else ({}, {})
    if len(t3):
        t3.loc["Improv."] = [f"{100 * imp[c]:+.1f}%" if c in imp and not pd.isna(imp[c]) else "–" for c in t3.columns]
    t4 = results_table(summary, NCF_ROWS, ["HR@1", "HR@2", "F1"]) if len(summary) else pd.DataFrame()
    sig = significance(summary, tables, which, n_boot, alpha) if len(summary) else pd.DataFrame()
    figs = {"fig5_ablations.png": figure5(summary) if len(summary) else None,
            "fig6_lambda.png": figure6(runs, n_boot, alpha, preset) if len(runs) else None}

    for name, df in (("table1", t1), ("table3", t3), ("table4", t4), ("significance", sig),
                     ("summary", summary)):
        atomic_write_text(out / f"{name}.csv", df.to_csv(index=name in ("table3", "table4")))
    write_json(out / "improvement.json", {"improvement": imp, "vs": {f"{d} {m}": list(v) for (d, m), v in which.items()}})
    images = []
    for name, fig in figs.items():
        if fig is not None:
            atomic_write_bytes(out / name, _png(fig))
            images.append(name)
        else:   # a figure of an earlier report whose runs are not in this one would mislead
            (out / name).unlink(missing_ok=True)
    conf = f"{100 * (1 - alpha):.0f}%"
    sections = [
        ("Table 1 - dataset statistics (prepared data)", t1, False),
        (f"Table 3 - main results (value [{conf} bootstrap CI over users]; users = ranked / binary; "
         "Improv. = best BDLM over best baseline)", t3, True),
        ("Table 4 - BDLM with NCF as the domain model", t4, True),
        ("Significance - BDLM vs the best baseline on the same users, and each BDLM-drs vs its domain model "
         "and vs the control (-FT: that model fine-tuned on the same prompt candidates without the LLM) "
         "(exact McNemar on per-user hits; paired bootstrap CI of the difference; with several seeds, "
         "wins and losses summed over the seeds both rows have, the difference averaged over them)", sig, False),
    ]
    which_preset = f"preset {preset}" if preset else "per dataset its largest preset"
    head = (f"From `{output_dir}`: {len(runs)} stored run sides; {which_preset}; joint runs at λ nearest {lam:g}; "
            f"{n_boot} bootstrap resamples.")
    md = [f"# BDLM report\n\n{head}\n"]
    html = [f"<h1>BDLM report</h1><p>{head}</p>"]
    for title, df, idx in sections:
        md.append(f"## {title}\n\n{to_markdown(df, index=idx)}")
        html.append(f"<h2>{title}</h2>" + (df.to_html(index=idx, float_format=lambda v: f"{v:.4g}")
                                          if len(df) else "<p><i>(no runs found)</i></p>"))
    for name in images:
        md.append(f"![{name}]({name})\n")
        html.append(f'<h2>{name}</h2><img src="{name}" style="max-width:100%">')
    md.append("## Runs used\n\n" + to_markdown(summary[["dataset", "label", "preset", "lambda_ml", "n_seeds", "runs"]]
                                                if len(summary) else summary, index=False))
    atomic_write_text(out / "report.md", "\n".join(md))
    atomic_write_text(out / "report.html", "<!doctype html><html><head><meta charset='utf-8'><title>BDLM report"
                      "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
                      "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}</style></head><body>"
                      + "\n".join(html) + "</body></html>")
    return out / "report.md"
