"""Figures of a prepared dataset (seaborn)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() == "agg" else None
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


def plot_interaction_counts(ds, path: str | Path | None = None):
    """Histograms (log-log) of interactions per user and per item — the long tail k-core trims."""
    full = pd.concat([ds.train, ds.valid, ds.test])
    per_user = full.groupby("user").size().rename("interactions").to_frame().assign(kind="per user")
    per_item = full.groupby("item").size().rename("interactions").to_frame().assign(kind="per item")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, df, label in ((axes[0], per_user, "users"), (axes[1], per_item, "items")):
        sns.histplot(df["interactions"], bins=np.geomspace(df["interactions"].min(),
                     df["interactions"].max() + 1, 30), ax=ax)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{ds.name}: interactions per {label[:-1]} ({len(df)} {label})")
        ax.set_xlabel("interactions")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
