"""Plots of a joint run: every loss term and the LLM↔M↔domain distances over steps."""
from __future__ import annotations

import pandas as pd

LOSSES = ("L_LLM", "L_ML^L", "L_D", "L_ML^D")
DISTANCES = ("dist_llm_M", "dist_domain_M", "dist_llm_domain")


def history_frame(history: dict) -> pd.DataFrame:
    """The per-step records as a long frame: step, term, value, kind (loss | distance)."""
    df = pd.DataFrame(history["steps"])
    cols = [c for c in LOSSES + DISTANCES if c in df.columns]
    long = df.melt(id_vars=["step"], value_vars=cols, var_name="term", value_name="value").dropna()
    long["value"] = long["value"].astype(float)
    long["kind"] = long["term"].map(lambda t: "distance" if t.startswith("dist") else "loss")
    return long


def plot_joint_history(history: dict, path=None, title: str | None = None):
    """Two panels (losses; distances, log scale) with seaborn; saved as PNG when `path` is given."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    long = history_frame(history)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, kind in zip(axes, ("loss", "distance")):
        d = long[long["kind"] == kind]
        if len(d):
            sns.lineplot(data=d, x="step", y="value", hue="term", marker="o", ax=ax)
            if kind == "distance" and (d["value"] > 0).all():
                ax.set_yscale("log")
        ax.set_title("loss terms" if kind == "loss" else "embedding distance (MSE) LLM↔M↔domain")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
