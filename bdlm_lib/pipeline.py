"""One entry point per method name, so notebooks and batches say *what* to run, not how.

    run_method("lightgcn", params, ds)       -> the domain model alone
    run_method("instructrec", params, ds)    -> text-only SFT of the backbone
    run_method("bdlm", params, ds)           -> joint training (both sides reported)

Method names are those of the method table (`bdlm_lib/methods.py`); their parameter bundles are
applied by `method_params`, so a notebook run by hand and a batch run resolve the same params.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

from . import methods


def method_params(method: str, dataset: str, preset: str, overrides: Mapping | None = None,
                  **top) -> "Params":  # noqa: F821
    """load_params with the method's bundle applied before the caller's overrides."""
    from .params import load_params
    bundle = dict(methods.get(method).bundle)
    over = {**bundle, **{k: v for k, v in top.items() if v is not None}, **dict(overrides or {})}
    return load_params(dataset, preset, overrides=over)


def run_method(method: str, params: Mapping, ds=None, run_dir: str | Path | None = None,
               progress: bool = True) -> dict:
    """Train and evaluate `method`; returns its metrics (the run folder is in metrics["run_dir"]).
    BDLM-type methods return {"llm": …, "drs": …} besides the drs headline."""
    from .data import load_dataset
    kind = methods.get(method).kind
    if ds is None:
        ds = load_dataset(params)
    t0 = time.perf_counter()
    if kind == "domain":
        from .domain import run_domain
        _, metrics, out = run_domain(params, ds, run_dir=run_dir)
    elif kind == "llm":
        from .llm.run import run_llm
        metrics, out = run_llm(params, ds, method, progress=progress, run_dir=run_dir)
    elif kind == "gpt4sm":
        from .baselines.gpt4sm import run_gpt4sm
        metrics, out = run_gpt4sm(params, ds, progress=progress, run_dir=run_dir)
    elif kind == "control":
        from .baselines.control import run_candidate_finetune
        metrics, out = run_candidate_finetune(params, ds, progress=progress, run_dir=run_dir)
    else:
        from .joint.run import run_bdlm
        m_llm, m_drs, out = run_bdlm(params, ds, progress=progress, run_dir=run_dir)
        metrics = {**m_drs, "llm": m_llm, "drs": m_drs}
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
            rows.append({"method": methods.get(method).display + suffix,
                         "HR@1": s["topk"]["HR@1"], "HR@2": s["topk"]["HR@2"],
                         "F1": s["binary"]["f1"], "AUC": s["binary"]["auc"],
                         "users": s["topk"]["n_users"]})
    return pd.DataFrame(rows).set_index("method").round(4)


def run_recorded(method: str, params: Mapping, ds, parent: str | Path, lambda_ml: float | None = None,
                 progress: bool = True) -> dict:
    """run_method into `<parent>/<run_id>/` with the batch runner's run.json, so the report finds
    runs made by a notebook by hand exactly like batch runs. A finished run is reused."""
    from . import store
    from .runs import read_json, write_json
    lam = float(lambda_ml if lambda_ml is not None else params["joint"]["lambda_ml"]) \
        if methods.get(method).uses_lambda else None
    run_dir = Path(parent) / methods.run_id(method, params["seed"], lam)
    # a finished run with these parameters is reused; one with other parameters is an error
    if store.claim(run_dir, params) == "finished":
        m = read_json(run_dir / store.METRICS)
        m["run_dir"] = str(run_dir)
        return m
    write_json(run_dir / store.RUN, {"method": method, "dataset": str(params["dataset"]),
                                     "seed": params["seed"], "preset": params["preset"],
                                     "lambda_ml": lam, "run_id": run_dir.name})
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
