"""How hard each kind of negative is: HR@1 of a run against the popularity-sampled negatives only
and against the title-similar negatives only (docs/protocol.md §2: each candidate set holds the
held-out item, about half popularity negatives and half title neighbours; `source` in the
candidate files says which). A user is a hit against a kind when the held-out item scores above
every negative of that kind (a tie counts against it). A hit against all 19 is a hit against both
halves, so HR@1 is at most the smaller of the two."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .records import KINDS, beaten_by_kind, user_table


def _hr1(beaten: pd.DataFrame) -> dict:
    return {k: float((beaten[f"beaten_{k}"] == 0).mean()) if len(beaten) else float("nan") for k in KINDS}


def hr1_by_negative_kind(predictions: pd.DataFrame, candidates: pd.DataFrame) -> dict:
    """{"all", "pop", "sim"} -> HR@1 over the users of `predictions` (test top-K rows)."""
    return _hr1(beaten_by_kind(predictions, candidates))


def run_negative_kinds(run_dir: str | Path, side: str = "main") -> dict | None:
    """`hr1_by_negative_kind` of a stored run: from its per-user record, or from its predictions and
    the candidate set of the prepared data its params.yaml names in the run's own output folder;
    None when neither is there. Any threshold will do: only the top-K columns are read."""
    t = user_table(run_dir, side, threshold=0.0, kinds=True)
    if t is None or "beaten_all" not in t:
        return None
    return _hr1(t[[f"beaten_{k}" for k in KINDS]].dropna())
