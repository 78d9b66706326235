"""One entry point per method name, so notebooks and batches say *what* to run, not how.

    run_method("lightgcn", params, ds)       -> the domain model alone
    run_method("instructrec", params, ds)    -> text-only SFT of the backbone
    run_method("bdlm", params, ds)           -> joint training (both sides reported)

Method names are the batch runner's (`bdlm_lib.experiments.batch.METHODS`); their param bundles
are applied by `method_params`, so a notebook run by hand and a batch run resolve the same params.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

DOMAIN_METHODS = {"lightgcn": "lightgcn", "ncf": "ncf", "gmf": "mf", "mf": "mf", "sasrec": "sasrec",
                  "gru4rec": "gru4rec", "bert4rec": "bert4rec"}
LLM_METHODS = {"llmrec": "llmrec", "instructrec": "instructrec", "et_pe": "et_pe", "et": "et"}
JOINT_METHODS = ("bdlm", "wo_jl", "wo_pe", "wo_et", "bdlm_ncf")
BASELINES = ("lightgcn", "ncf", "gmf", "sasrec", "gru4rec", "bert4rec", "llmrec", "instructrec", "gpt4sm")
ABLATIONS = ("bdlm", "wo_jl", "wo_pe", "wo_et")
# BDLM's domain step without the LLM: is BDLM-drs's gain the LLM's, or the prompt candidates'?
CONTROL_METHODS = ("ncf_ft", "lightgcn_ft")

# Paper names for tables (Table 3 / Figure 5).
DISPLAY = {"lightgcn": "LightGCN", "ncf": "NCF", "gmf": "GMF", "sasrec": "SASRec", "gru4rec": "GRU4Rec",
           "bert4rec": "BERT4Rec", "llmrec": "LLM-Rec", "instructrec": "InstructRec", "gpt4sm": "GPT4SM",
           "et_pe": "ET+PE SFT", "bdlm": "BDLM", "wo_jl": "w/o JL", "wo_pe": "w/o PE", "wo_et": "w/o ET",
           "bdlm_ncf": "BDLM-NCF", "ncf_ft": "NCF-FT", "lightgcn_ft": "LightGCN-FT"}


def method_params(method: str, dataset: str, preset: str, overrides: Mapping | None = None,
                  **top) -> "Params":  # noqa: F821
    """load_params with the method's bundle applied before the caller's overrides."""
    from .experiments.batch import METHODS
    from .params import load_params
    if method not in METHODS and method not in LLM_METHODS:
        raise ValueError(f"method '{method}': expected one of {', '.join(sorted(set(METHODS) | set(LLM_METHODS)))}")
    bundle = dict(METHODS.get(method, {}))
    over = {**bundle, **{k: v for k, v in top.items() if v is not None}, **dict(overrides or {})}
    return load_params(dataset, preset, overrides=over)


def run_method(method: str, params: Mapping, ds=None, run_dir: str | Path | None = None,
               progress: bool = True) -> dict:
    """Train and evaluate `method`; returns its metrics (the run folder is in metrics["run_dir"]).
    BDLM-type methods return {"llm": …, "drs": …} besides the drs headline."""
    from .data import load_dataset
    if ds is None:
        ds = load_dataset(params)
    t0 = time.perf_counter()
    if method in DOMAIN_METHODS:
        from .domain import run_domain
        _, metrics, out = run_domain(params, ds, run_dir=run_dir)
    elif method in LLM_METHODS:
        from .llm.run import run_llm
        metrics, out = run_llm(params, ds, LLM_METHODS[method], progress=progress, run_dir=run_dir)
    elif method == "gpt4sm":
        from .joint.gpt4sm import run_gpt4sm
        metrics, out = run_gpt4sm(params, ds, progress=progress, run_dir=run_dir)
    elif method in CONTROL_METHODS:
        from .joint.control import run_candidate_finetune
        metrics, out = run_candidate_finetune(params, ds, progress=progress, run_dir=run_dir)
    elif method in JOINT_METHODS:
        from .joint.run import run_bdlm
        m_llm, m_drs, out = run_bdlm(params, ds, progress=progress, run_dir=run_dir)
        metrics = {**m_drs, "llm": m_llm, "drs": m_drs}
    else:
        raise ValueError(f"method '{method}': no runner (known: {', '.join(BASELINES + JOINT_METHODS + CONTROL_METHODS)})")
    metrics = dict(metrics)
    metrics["run_dir"] = str(out)
    metrics.setdefault("seconds_total", round(time.perf_counter() - t0, 1))
    return metrics


def headline_rows(results: Mapping[str, Mapping]) -> "pd.DataFrame":  # noqa: F821
    """A results table (HR@1, HR@2, F1, AUC) from {method: metrics}; BDLM methods give two rows."""
    import pandas as pd
    rows = []
    for method, m in results.items():
        sides = [("-llm", m["llm"]), ("-drs", m["drs"])] if "llm" in m and "drs" in m else [("", m)]
        for suffix, s in sides:
            rows.append({"method": DISPLAY.get(method, method) + suffix,
                         "HR@1": s["topk"]["HR@1"], "HR@2": s["topk"]["HR@2"],
                         "F1": s["binary"]["f1"], "AUC": s["binary"]["auc"],
                         "users": s["topk"]["n_users"]})
    return pd.DataFrame(rows).set_index("method").round(4)


def run_recorded(method: str, params: Mapping, ds, parent: str | Path, lambda_ml: float | None = None,
                 progress: bool = True) -> dict:
    """run_method into `<parent>/<run_id>/` with the batch runner's run.json, so the report finds
    runs made by a notebook by hand exactly like batch runs. A finished run is reused."""
    from .runs import read_json, write_json
    joint = method in JOINT_METHODS and method != "wo_jl"
    run_id = f"{method}-lam{float(lambda_ml if lambda_ml is not None else params['joint']['lambda_ml']):g}" \
        if joint else method
    run_dir = Path(parent) / f"{run_id}-s{params['seed']}"
    if (run_dir / "metrics.json").exists():
        m = read_json(run_dir / "metrics.json")
        m["run_dir"] = str(run_dir)
        return m
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "run.json", {"method": method, "dataset": str(params["dataset"]),
                                      "seed": params["seed"], "preset": params.get("preset"),
                                      "lambda_ml": float(params["joint"]["lambda_ml"]) if joint else None,
                                      "run_id": run_dir.name})
    return run_method(method, params, ds, run_dir=run_dir, progress=progress)


def plot_methods(results: Mapping[str, Mapping], metric: str = "HR@1", title: str = "", path=None):
    """Bar chart of one metric per method (both sides for BDLM-type methods) — Figure 5's shape."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    df = headline_rows(results).reset_index()
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(df)), 3.4))
    sns.barplot(data=df, x="method", y=metric, ax=ax, color=sns.color_palette("deep")[0])
    ax.set_title(title or metric)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_lambda(results: Mapping[float, Mapping], metric: str = "HR@1", title: str = "", path=None):
    """HR@1 against λ for BDLM-llm and BDLM-drs (Figure 6); λ = 0 drawn a decade left of the
    smallest positive λ, since a log axis has no 0."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    lams = sorted(results)
    pos = [v for v in lams if v > 0]
    zero_x = min(pos) / 10 if pos else 1e-3
    rows = [{"λ": zero_x if lam == 0 else lam, "side": f"BDLM-{side}", metric: m[side]["topk"][metric]
             if metric.startswith(("HR", "NDCG")) else m[side]["binary"][metric]}
            for lam, m in results.items() for side in ("llm", "drs")]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    sns.lineplot(data=pd.DataFrame(rows), x="λ", y=metric, hue="side", marker="o", ax=ax)
    ax.set_xscale("log")
    ax.set_xticks([zero_x if v == 0 else v for v in lams], ["0" if v == 0 else f"{v:g}" for v in lams])
    ax.minorticks_off()
    ax.set_title(title or f"{metric} against λ")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def run_many(methods, dataset: str, preset: str, overrides: Mapping | None = None, seed: int = 42,
             output_dir: str = "outputs", data_dir: str | None = None, run_dir: str | None = None,
             tag: str = "runs", lambdas=None, progress: bool = True) -> dict:
    """What notebooks 05-07 call. Inside a batch (`run_dir` given) exactly one method runs, into
    that folder. By hand, each method (× each λ in `lambdas` for joint methods) runs into
    `<output_dir>/<dataset>/<tag>-<preset>/<run_id>/`, reusing finished runs.
    Returns {method: metrics}, or {λ: metrics} when `lambdas` is given."""
    from .data import load_dataset
    methods = [methods] if isinstance(methods, str) else list(methods)
    common = dict(seed=seed, output_dir=output_dir, data_dir=data_dir)
    ds = load_dataset(method_params(methods[0], dataset, preset, overrides, **common), verbose=False)
    if run_dir is not None:
        if len(methods) != 1:
            raise ValueError(f"a batch run executes one method, got {methods}")
        p = method_params(methods[0], dataset, preset, overrides, **common)
        return {methods[0]: run_method(methods[0], p, ds, run_dir=run_dir, progress=progress)}
    parent = Path(output_dir) / Path(dataset).name / f"{tag}-{preset}"
    out: dict = {}
    for m in methods:
        for lam in (lambdas if lambdas is not None else [None]):
            over = {**dict(overrides or {}), **({"joint.lambda_ml": float(lam)} if lam is not None else {})}
            p = method_params(m, dataset, preset, over, **common)
            key = float(lam) if lambdas is not None else m
            out[key] = run_recorded(m, p, ds, parent, progress=progress)
    return out
