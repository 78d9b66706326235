"""BDLM's two sides against the plain domain model and InstructRec (the notebook's results table).

Baseline runs are found by their params.yaml (same dataset, seed, data, test sets, eval users and
preset); a missing one is run when `run_missing` (InstructRec = text-only SFT via llm.run_llm, the
domain model via `pretrained_domain`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd
import yaml

from ..runs import read_json
from ..store import dataset_root

KEYS = ("eval", "preset")     # with the data recipe (run.same_data)


def _matches(run: Path, params: Mapping) -> bool:
    from .run import _same, same_data
    if not (run / "metrics.json").exists() or not (run / "params.yaml").exists():
        return False
    with open(run / "params.yaml", encoding="utf-8") as f:
        saved = yaml.safe_load(f)
    return same_data(saved, params) and all(_same(saved.get(k), params.get(k)) for k in KEYS)


def find_run(parent: Path, name: str, params: Mapping) -> Path | None:
    """The latest finished run `parent/name[-k]` made with the same data/eval params."""
    cands = sorted(Path(parent).glob(f"{name}*"), key=lambda p: p.stat().st_mtime, reverse=True) \
        if Path(parent).is_dir() else []
    return next((c for c in cands if _matches(c, params)), None)


def _row(method: str, m: Mapping, run) -> dict:
    return {"method": method, "HR@1": m["topk"]["HR@1"], "HR@2": m["topk"]["HR@2"],
            "F1": m["binary"]["f1"], "AUC": m["binary"].get("auc"), "n_users": m["topk"]["n_users"],
            "run": str(run)}


def results_table(params: Mapping, ds=None, bdlm_run=None, domain_run=None, run_missing: bool = True,
                  progress: bool = True) -> pd.DataFrame:
    """Rows: the domain model, InstructRec, BDLM-llm, BDLM-drs (HR@1, HR@2, F1, AUC) and, for the
    BDLM rows, the relative HR@1 improvement over the best baseline row."""
    root = dataset_root(params)
    rows = []
    dom = Path(domain_run) if domain_run else find_run(root / "domain", params["domain"]["model"], params)
    if dom is None and run_missing:
        from .run import pretrained_domain
        dom = pretrained_domain(params, ds)[1]
    if dom is not None:
        m = read_json(dom / "metrics.json")
        if (m.get("max_users"), m.get("topk_users", m.get("max_users"))) != \
                (params["eval"]["max_users"], params["eval"].get("topk_users") or params["eval"]["max_users"]):
            # same users as the other rows
            from ..data import load_dataset
            from ..domain import evaluate_domain, load_domain
            m = evaluate_domain(load_domain(dom), ds if ds is not None else load_dataset(params), params)
        rows.append(_row(params["domain"]["model"], m, dom))
    ir = find_run(root / "llm", "instructrec", params)
    if ir is None and run_missing:
        from ..data import load_dataset
        from ..llm import run_llm
        ir = run_llm(params, ds if ds is not None else load_dataset(params), "instructrec", progress=progress)[1]
    if ir is not None:
        rows.append(_row("InstructRec", read_json(ir / "metrics.json"), ir))
    else:   # shown, not silently dropped: run llm.run_llm(params, ds, "instructrec") to fill it
        rows.append({"method": "InstructRec", "HR@1": None, "HR@2": None, "F1": None, "AUC": None,
                     "n_users": None, "run": "not run (no matching run under llm/instructrec*)"})
    best = max((r["HR@1"] for r in rows if r["HR@1"] is not None), default=None)
    if bdlm_run is not None:
        m = read_json(Path(bdlm_run) / "metrics.json")
        for side, name in (("llm", "BDLM-llm"), ("drs", "BDLM-drs")):
            rows.append(_row(name, m[side], bdlm_run))
    df = pd.DataFrame(rows).set_index("method")
    if best is not None:
        df["HR@1 vs best baseline"] = [("n/a (best baseline HR@1 = 0)" if best == 0 else
                                        f"{100 * (h / best - 1):+.1f}%") if n.startswith("BDLM") else ""
                                       for n, h in zip(df.index, df["HR@1"])]
    return df
