"""A run's per-user record: all that the report reads of its predictions, one row per ranked user.

A run's predictions (the long frame of `metrics.evaluate`: every candidate's score) are where the
report's CIs, paired tests, bucket tables and negatives' table start, but each of them needs only a
few numbers per user:

    rank                 the held-out item's place among the user's candidates (0 = first; a tie
                         goes to the candidate stored first, as in `metrics.evaluate`)
    tp, fp, fn           the user's binary pairs at the run's threshold; n_binary, how many pairs
                         (0: ranked, not scored on the binary task)
    beaten_all / _pop / _sim   how many negatives (all; popularity-sampled; title neighbours: the
                         candidate file's `source`) score at least as high as the held-out item
    item_popularity, user_history   the user's bucket labels (`metrics.user_buckets`)

`bdlm archive` keeps this record (`per_user.parquet`; `per_user_llm.parquet` and
`per_user_drs.parquet` for the two sides of a joint run) instead of the predictions: on full data a
run's predictions are megabytes of float scores, its record a small fraction of that. The report
reads a run's record where there is one and makes it from the predictions where not (an output
folder), with the same result either way (tested).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..runs import atomic_write_bytes
from .collect import load_predictions

KINDS = ("all", "pop", "sim")
LABELS = ("item_popularity", "user_history")


def record_name(side: str = "main") -> str:
    return "per_user.parquet" if side == "main" else f"per_user_{side}.parquet"


def _test_topk(preds: pd.DataFrame) -> pd.DataFrame:
    p = preds[preds["task"] == "topk"] if "task" in preds else preds
    return p[p["split"] == "test"] if "split" in p else p


def per_user(preds: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per-user columns hit1, hit2 (top-K), tp, fp, fn (binary at `threshold`) and n_binary (the
    user's binary rows: 0 for users ranked but not on the binary task), index user."""
    return hits(user_record(preds, threshold))[["hit1", "hit2", "tp", "fp", "fn", "n_binary"]]


def hits(record: pd.DataFrame) -> pd.DataFrame:
    """A record with hit1 and hit2 (floats, as the bootstrap sums them) from its rank."""
    return record.assign(hit1=(record["rank"] < 1).astype(float), hit2=(record["rank"] < 2).astype(float))


def beaten_by_kind(preds: pd.DataFrame, candidates: pd.DataFrame) -> pd.DataFrame:
    """Per user of both frames: how many negatives of each kind score at least as high as the
    held-out item (a tie counts against it), columns beaten_all / beaten_pop / beaten_sim."""
    m = candidates.merge(_test_topk(preds)[["user", "item", "score"]], on=["user", "item"])
    pos = m[m["label"] == 1].set_index("user")["score"]
    neg = m[m["label"] == 0]
    beaten = pd.Series(neg["score"].to_numpy() >= pos.reindex(neg["user"]).to_numpy(), index=neg.index)
    out = {}
    for kind, mask in (("all", neg["source"].notna()), ("pop", neg["source"] == "pop"), ("sim", neg["source"] == "sim")):
        out[f"beaten_{kind}"] = beaten[mask].groupby(neg.loc[mask, "user"]).sum().reindex(pos.index, fill_value=0)
    return pd.DataFrame(out, index=pos.index).astype("int16")


def user_record(preds: pd.DataFrame, threshold: float, candidates: pd.DataFrame | None = None) -> pd.DataFrame:
    """The per-user record of one run side's predictions (module docstring), index user (sorted);
    the beaten_* columns only when `candidates` (the test candidate file, with `source`) is given,
    the bucket labels only when the predictions carry them."""
    tk = _test_topk(preds).reset_index(drop=True)
    tk = tk.assign(order=np.arange(len(tk))).sort_values(["user", "score", "order"],
                                                          ascending=[True, False, True], kind="stable")
    tk["rank"] = tk.groupby("user").cumcount()
    first = tk[tk["label"] == 1].set_index("user")
    out = first[["rank"]].astype("int16")
    bn = preds[preds["task"] == "binary"]
    pred = bn["score"].to_numpy() >= threshold
    lab = bn["label"].to_numpy() == 1
    counts = pd.DataFrame({"user": bn["user"].to_numpy(), "tp": pred & lab, "fp": pred & ~lab,
                           "fn": ~pred & lab, "n_binary": np.ones(len(bn))}).groupby("user").sum()
    out = out.join(counts, how="left").fillna(0.0)
    out[["tp", "fp", "fn", "n_binary"]] = out[["tp", "fp", "fn", "n_binary"]].astype("int32")
    if candidates is not None and "source" in candidates:
        out = out.join(beaten_by_kind(preds, candidates), how="left")
    for col in LABELS:
        if col in first:
            out[col] = first[col].astype(str)
    return out


def candidates_of(run_dir: str | Path) -> pd.DataFrame | None:
    """The test candidate file of the prepared data a run's params.yaml names, in the run's own
    output folder (`<root>/<dataset>/<batch>/<run_id>`), or None when it is not there."""
    from ..data.dataset import dataset_tag
    run_dir = Path(run_dir)
    if not (run_dir / "params.yaml").exists():
        return None
    p = yaml.safe_load((run_dir / "params.yaml").read_text(encoding="utf-8")) or {}
    if not p.get("data") or "dataset" not in p:
        return None
    f = run_dir.parent.parent.parent / Path(str(p["dataset"])).name / "data" / dataset_tag(p) / "test_topk.parquet"
    return pd.read_parquet(f) if f.exists() else None


def write_record(run_dir: str | Path, side: str, threshold: float, dst: str | Path) -> bool:
    """Write the record of `run_dir`'s side `side` into folder `dst` (atomically); False when the
    run has no predictions for that side."""
    preds = load_predictions(run_dir, side)
    if preds is None:
        return False
    rec = user_record(preds, threshold, candidates_of(run_dir)).reset_index()
    buf = io.BytesIO()
    rec.to_parquet(buf, index=False)
    atomic_write_bytes(Path(dst) / record_name(side), buf.getvalue())
    return True


def user_table(run_dir: str | Path, side: str = "main", threshold: float | None = None,
               kinds: bool = False) -> pd.DataFrame | None:
    """A run side's record with hit1 and hit2, index user: read from its per_user file, else made
    from its predictions (at `threshold`; with the beaten_* columns when `kinds` and its candidate
    file is found); None when it has neither (or no threshold)."""
    run_dir = Path(run_dir)
    f = run_dir / record_name(side)
    if f.exists():
        return hits(pd.read_parquet(f).set_index("user"))
    preds = load_predictions(run_dir, side)
    if preds is None or threshold is None:
        return None
    return hits(user_record(preds, float(threshold), candidates_of(run_dir) if kinds else None))
