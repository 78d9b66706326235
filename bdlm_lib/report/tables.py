"""The report's tables: rows in the paper's order, cells 'value [lo, hi]', and Markdown."""
from __future__ import annotations

import pandas as pd


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


def to_markdown(df: pd.DataFrame, index: bool = True) -> str:
    if df.empty:
        return "_(no runs found)_\n"
    d = df.reset_index() if index else df
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    cols = [str(c) for c in d.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in d.itertuples(index=False)]
    return "\n".join(lines) + "\n"
