"""Export a prepared dataset as RecBole atomic files, so any RecBole model can be trained on our
splits and scored on our persisted candidate sets (docs/protocol.md).

    <out>/<name>.train.inter  .valid.inter  .test.inter   user_id:token  item_id:token  timestamp:float
    <out>/<name>.item                                      item_id:token  title:token_seq
    <out>/<name>.{valid,test}.cand                         user_id:token  item_id:token  label:float  position:float

The ids are our raw ids (strings), so RecBole's own remapping cannot shift them. With RecBole's
`benchmark_filename: [train, valid, test]` the three splits are used as they are; the `.cand`
files are ours (RecBole has no such atomic file): score each row and rank within a user, the
held-out item has label 1. `read_recbole` reads all of it back (the round trip is tested).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from ..runs import atomic_write_text

SPLITS = ("train", "valid", "test")


def _table(df: pd.DataFrame, header: list[str]) -> str:
    buf = io.StringIO()
    out = df.copy()
    out.columns = header
    # titles may hold quotes or tabs: RecBole reads with csv's default quoting off, so they go
    tsv = out.apply(lambda c: c.astype(str).str.replace("\t", " ").str.replace("\n", " ")
                    if c.dtype == object else c)
    tsv.to_csv(buf, sep="\t", index=False, quoting=csv.QUOTE_NONE, escapechar="\\")
    return buf.getvalue()


def export_recbole(ds, out: str | Path, name: str | None = None) -> Path:
    """Write `ds` (a RecDataset) as RecBole atomic files under `out`; returns the folder."""
    out = Path(out)
    name = name or Path(str(ds.name)).name
    users = ds.users.set_index("user")["raw_id"]
    items = ds.items.set_index("item")["raw_id"]
    for split in SPLITS:
        df = getattr(ds, split)
        rows = pd.DataFrame({"u": users.loc[df["user"]].to_numpy(), "i": items.loc[df["item"]].to_numpy(),
                             "t": df["timestamp"].astype(float).to_numpy()})
        atomic_write_text(out / f"{name}.{split}.inter",
                          _table(rows, ["user_id:token", "item_id:token", "timestamp:float"]))
    titles = pd.DataFrame({"i": items.to_numpy(), "title": ds.items["title"].to_numpy()})
    atomic_write_text(out / f"{name}.item", _table(titles, ["item_id:token", "title:token_seq"]))
    for split in ("valid", "test"):
        c = ds.topk(split)
        rows = pd.DataFrame({"u": users.loc[c["user"]].to_numpy(), "i": items.loc[c["item"]].to_numpy(),
                             "label": c["label"].astype(float).to_numpy(),
                             "position": c["position"].astype(float).to_numpy()})
        atomic_write_text(out / f"{name}.{split}.cand",
                          _table(rows, ["user_id:token", "item_id:token", "label:float", "position:float"]))
    return out


def read_recbole(folder: str | Path, name: str) -> dict[str, pd.DataFrame]:
    """The exported files back as frames with plain column names (user_id, item_id, ...)."""
    folder = Path(folder)
    out = {}
    for f in [f"{s}.inter" for s in SPLITS] + ["item", "valid.cand", "test.cand"]:
        df = pd.read_csv(folder / f"{name}.{f}", sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False)
        df.columns = [c.split(":")[0] for c in df.columns]
        out[f] = df
    return out
