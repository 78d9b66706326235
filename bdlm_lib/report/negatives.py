"""How hard each kind of negative is: HR@1 of a run against the popularity-sampled negatives only
and against the title-similar negatives only (docs/protocol.md §2: each candidate set holds the
held-out item, about half popularity negatives and half title neighbours; `source` in the
candidate files says which). A user is a hit against a kind when the held-out item scores above
every negative of that kind (a tie counts against it). A hit against all 19 is a hit against both
halves, so HR@1 is at most the smaller of the two."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from .collect import load_predictions


def hr1_by_negative_kind(predictions: pd.DataFrame, candidates: pd.DataFrame) -> dict:
    """{"all", "pop", "sim"} -> HR@1 over the users of `predictions` (test top-K rows)."""
    p = predictions
    if "task" in p:
        p = p[p["task"] == "topk"]
    if "split" in p:
        p = p[p["split"] == "test"]
    m = candidates.merge(p[["user", "item", "score"]], on=["user", "item"])
    pos = m[m["label"] == 1].set_index("user")["score"]
    neg = m[m["label"] == 0]
    beaten = pd.Series(neg["score"].to_numpy() >= pos.reindex(neg["user"]).to_numpy(), index=neg.index)
    out = {}
    for kind, mask in (("all", neg["source"].notna()), ("pop", neg["source"] == "pop"), ("sim", neg["source"] == "sim")):
        n_beat = beaten[mask].groupby(neg.loc[mask, "user"]).sum().reindex(pos.index, fill_value=0)
        out[kind] = float((n_beat == 0).mean()) if len(pos) else float("nan")
    return out


def run_negative_kinds(run_dir: str | Path) -> dict | None:
    """`hr1_by_negative_kind` of a stored run, its candidate set read from the prepared data its
    params.yaml names in the run's own output folder (or archive); None when that data or the
    predictions are not there."""
    from ..data.dataset import dataset_tag
    run_dir = Path(run_dir)
    f = run_dir / "params.yaml"
    if not f.exists():
        return None
    p = yaml.safe_load(f.read_text(encoding="utf-8"))
    root = run_dir.parent.parent.parent             # <root>/<dataset>/<batch>/<run_id>
    cand = root / Path(str(p["dataset"])).name / "data" / dataset_tag(p) / "test_topk.parquet"
    preds = load_predictions(run_dir)
    if not cand.exists() or preds is None:
        return None
    c = pd.read_parquet(cand)
    return hr1_by_negative_kind(preds, c) if "source" in c else None
