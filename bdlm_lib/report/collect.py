"""Collecting stored runs for the report: every finished run folder under the output folder, one
row per (run, side), and the choice of which runs fill the tables.

A run folder is `<output_dir>/<dataset>/<batch>/<run_id>/` with run.json (method, λ, seed, written by
the batch runner), params.yaml, metrics.json and, when the notebook saved it, predictions.parquet —
the long frame (task, split, user, item, label, score) of `metrics.evaluate(..., return_predictions=True)`.
Two-sided joint runs (BDLM) write metrics.json as {"llm": <evaluate layout>, "drs": <evaluate layout>}
and predictions with a `side` column (or predictions_llm.parquet / predictions_drs.parquet).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml

from .. import store
from ..methods import BDLM_ROWS
from ..methods import label as method_label
from ..runs import read_json

METRICS = ["HR@1", "HR@2", "precision", "recall", "F1"]
CI_METRICS = ["HR@1", "HR@2", "F1"]
PRESET_RANK = {"paper": 4, "cpu": 3, "demo": 2, "smoke": 1}


def run_sides(metrics: dict) -> dict[str, dict]:
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
            from ..methods import joint_method
            info = {"method": joint_method(params) if params.get("joint") else "bdlm"}
        else:
            return None
    info.setdefault("preset", params.get("preset"))
    info["setting"] = data_setting(params.get("data") or {})
    info["full_data"] = full_data(params)
    info.setdefault("seed", params.get("seed"))
    if info.get("lambda_ml") is None and info["method"] in ("bdlm", "bdlm_ncf", "wo_pe", "wo_et"):
        info["lambda_ml"] = (params.get("joint") or {}).get("lambda_ml")
    return info


def data_setting(data: dict) -> str:
    """'default', or the sparsity knobs a run's data was made with ('keep 0.5', 'cold 0.2', ...)."""
    parts = []
    if data.get("train_keep") not in (None, 1, 1.0):
        parts.append(f"keep {float(data['train_keep']):g}"
                     + (" uniform" if data.get("train_keep_order") == "uniform" else ""))
    if data.get("cold_items"):
        parts.append(f"cold {float(data['cold_items']):g}")
    return ", ".join(parts) or "default"


def full_data(params: dict) -> bool:
    """Every user of the k-core (no sampled users, no top-items subset) evaluated on every user."""
    if not params.get("data") or not params.get("eval"):
        return False                  # no params.yaml: nothing says which data it used
    d, ev = params["data"], params["eval"]
    return (d.get("sample_users") is None and d.get("top_items") is None and ev.get("max_users") is None
            and ev.get("topk_users") is None)


def as_folders(output_dir: str | Path | Sequence[str | Path]) -> list[Path]:
    """One output folder or several (e.g. a machine's outputs and the committed results archive)."""
    return [Path(output_dir)] if isinstance(output_dir, (str, Path)) else [Path(d) for d in output_dir]


def collect_runs(output_dir: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """One row per (run, side) with a known method: dataset, label, λ, seed, preset, metrics, run_dir.
    From one folder or several: a run found in two of them with the same identity (fingerprint)
    counts once, from the first folder named; `finished` orders runs (the newest run of a seed wins)."""
    rows, seen = [], set()
    for mfile in (m for d in as_folders(output_dir) for m in sorted(d.glob(f"*/*/*/{store.METRICS}"))):
        run_dir = mfile.parent
        info = _run_info(run_dir)
        if not info or method_label(info.get("method"), "main") is None:
            continue
        fp = run_dir / store.FINGERPRINT
        key = (*run_dir.parts[-3:], fp.read_text(encoding="utf-8") if fp.exists() else str(run_dir))
        if key in seen:
            continue
        seen.add(key)
        metrics = read_json(mfile)
        for side, m in run_sides(metrics).items():
            label = method_label(info["method"], side)
            if label is None:
                continue
            if info.get("flag") not in (None, "none"):   # e.g. "InstructRec+aux": its own row
                label = f"{label}+{info['flag']}"
            tk, bn = m.get("topk", {}), m.get("binary", {})
            rows.append({"dataset": run_dir.parent.parent.name, "batch": run_dir.parent.name,
                         "run_id": run_dir.name, "method": info["method"], "side": side, "label": label,
                         "lambda_ml": info.get("lambda_ml"), "seed": info.get("seed"),
                         "preset": info.get("preset"), "setting": info.get("setting", "default"),
                         "full_data": bool(info.get("full_data")), "HR@1": tk.get("HR@1"), "HR@2": tk.get("HR@2"),
                         "precision": bn.get("precision"), "recall": bn.get("recall"), "F1": bn.get("f1"),
                         "threshold": bn.get("threshold"), "AUC": bn.get("auc"), "full": m.get("full"),
                         "run_dir": str(run_dir), "finished": store.finished_utc(run_dir)})
    return pd.DataFrame(rows, columns=["dataset", "batch", "run_id", "method", "side", "label", "lambda_ml",
                                       "seed", "preset", "setting", "full_data", *METRICS, "threshold", "AUC",
                                       "full", "run_dir", "finished"])


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


def one_preset(runs: pd.DataFrame, preset: str | None = None) -> pd.DataFrame:
    """The runs of `preset`, or per dataset those of its largest preset (paper > cpu > demo >
    smoke) among the presets that have a BDLM run (any preset when none has): methods are only
    compared on the same data sample, users and training budget; domain models alone at a larger
    preset (the full-data baselines) have their own table."""
    if runs.empty:
        return runs
    if preset is not None:
        return runs[runs["preset"] == preset]
    has_bdlm = runs["label"].isin(BDLM_ROWS).groupby([runs["dataset"], runs["preset"]]).transform("any")
    rank = runs["preset"].map(PRESET_RANK).fillna(0) + 10 * has_bdlm.astype(float)
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
    r = r.sort_values(["lam_dist", "finished"], ascending=[True, False])
    best = r.groupby(["dataset", "label"]).head(1)[["dataset", "label", "preset", "lam_dist"]]
    r = r.merge(best, on=["dataset", "label", "preset", "lam_dist"])
    return r.drop_duplicates(["dataset", "label", "seed"]).drop(columns=["lam_dist"])


def table1(output_dir: str | Path | Sequence[str | Path], chosen: pd.DataFrame | None = None) -> pd.DataFrame:
    """Statistics of the prepared data samples: those the reported runs used (read from their
    params.yaml), or every prepared sample when no reported run says which it used."""
    from ..data.dataset import dataset_tag
    used = set()
    for rd in (set(chosen["run_dir"]) if chosen is not None and len(chosen) else ()):
        f = Path(rd) / "params.yaml"
        if f.exists():
            p = yaml.safe_load(f.read_text(encoding="utf-8"))
            used.add((Path(str(p["dataset"])).name, dataset_tag(p)))
    rows, seen = [], set()
    for man in (m for d in as_folders(output_dir) for m in sorted(d.glob("*/data/*/manifest.json"))):
        key = (man.parent.parent.parent.name, man.parent.name)
        if (used and key not in used) or key in seen:
            continue
        seen.add(key)
        s = read_json(man)["stats"]
        rows.append({"dataset": man.parent.parent.parent.name, "data": man.parent.name, "#users": s["users"],
                     "#items": s["items"], "#interactions": s["interactions"],
                     "sparsity": f"{100 * s['sparsity']:.2f}%"})
    return pd.DataFrame(rows)
