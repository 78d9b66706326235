"""Training curves of a domain run (seaborn), saved as PNG next to its metrics."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_history(history: list[dict], path=None, title: str | None = None):
    """Two panels: train loss and validation HR@1 per epoch. Returns the figure; with `path`,
    also writes it as PNG."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = pd.DataFrame(history, columns=["epoch", "loss", "valid_hr1"] if not history else None)
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    if df.empty:                  # a model without training (popularity): say so instead of curves
        for ax in axes:
            ax.text(0.5, 0.5, "no training epochs", ha="center", va="center", transform=ax.transAxes)
    else:
        sns.lineplot(data=df, x="epoch", y="loss", marker="o", ax=axes[0])
        ev = df.dropna(subset=["valid_hr1"])
        sns.lineplot(data=ev, x="epoch", y="valid_hr1", marker="o", color="C1", ax=axes[1])
    axes[0].set_title("train loss")
    axes[1].set_title("validation HR@1")
    axes[1].set_ylabel("HR@1")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        from ..runs import atomic_write_bytes
        import io
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        atomic_write_bytes(Path(path), buf.getvalue())
    return fig
