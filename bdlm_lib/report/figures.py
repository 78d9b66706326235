"""The report's figures: Figure 5 (ablations) and Figure 6 (HR@1 against λ), with CIs."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from ..methods import ABLATION_ROWS, BDLM_ROWS
from .collect import one_preset
from .statistics import summarise


def png_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def figure5(summary: pd.DataFrame):
    """Ablations: HR@1 (with CIs) of w/o ET, w/o PE, w/o JL and BDLM, per dataset and side."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    rows = []
    for _, r in summary.iterrows():
        base, _, side = r["label"].partition("-")
        base = "BDLM" if r["label"] in BDLM_ROWS else base
        if base in ABLATION_ROWS and r["label"] not in ("BDLM-NCF-llm", "BDLM-NCF-drs"):
            rows.append({**r, "variant": base, "side": side or "drs"})
    df = pd.DataFrame(rows)
    if df.empty:
        return None
    datasets = list(dict.fromkeys(df["dataset"]))
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    sides = sorted(df["side"].unique())
    pal = sns.color_palette("deep", len(sides))
    for ax, ds in zip(axes[0], datasets):
        d = df[df["dataset"] == ds]
        order = [v for v in ABLATION_ROWS if v in set(d["variant"])]
        width = 0.8 / len(sides)
        for k, side in enumerate(sides):
            s = d[d["side"] == side].set_index("variant").reindex(order)
            x = np.arange(len(order)) + (k - (len(sides) - 1) / 2) * width
            y = s["HR@1"].to_numpy(float)
            err = None
            if "HR@1 lo" in s:
                err = np.abs(np.vstack([y - s["HR@1 lo"].to_numpy(float), s["HR@1 hi"].to_numpy(float) - y]))
                err = np.nan_to_num(err)
            ax.bar(x, y, width, yerr=err, capsize=3, label=side, color=pal[k])
        ax.set_xticks(np.arange(len(order)), order)
        ax.set_title(ds)
        ax.set_ylabel("HR@1")
    axes[0][-1].legend(title="side")
    fig.suptitle("Figure 5 - ablations (95% bootstrap CI)", y=1.04)
    return fig


def figure6(runs: pd.DataFrame, n_boot: int, alpha: float, preset: str | None = None):
    """HR@1 against λ for BDLM-llm and BDLM-drs, per dataset; log x, with λ=0 drawn one decade
    left of the smallest positive λ and labelled '0' (a log axis has no 0)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    r = one_preset(runs[runs["method"] == "bdlm"].dropna(subset=["lambda_ml"]), preset)
    if r.empty or r["lambda_ml"].nunique() < 2:
        return None
    datasets = list(dict.fromkeys(r["dataset"]))
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        d = r[r["dataset"] == ds].sort_values("finished", ascending=False).drop_duplicates(["label", "lambda_ml", "seed"])
        lams = sorted(d["lambda_ml"].astype(float).unique())
        pos = [v for v in lams if v > 0]
        zero_x = (min(pos) / 10) if pos else 1e-3
        for label, g in d.groupby("label"):
            pts = []
            for lam, gl in g.groupby("lambda_ml"):
                summ, _ = summarise(gl, n_boot, alpha)
                s = summ.iloc[0]
                pts.append((zero_x if lam == 0 else lam, s["HR@1"], s.get("HR@1 lo", np.nan), s.get("HR@1 hi", np.nan)))
            x, y, lo, hi = map(np.array, zip(*sorted(pts)))
            ax.plot(x, y, marker="o", label=label)
            if np.isfinite(lo).all():
                ax.fill_between(x, lo, hi, alpha=0.15)
        ax.set_xscale("log")
        ticks = [zero_x if v == 0 else v for v in lams]
        ax.set_xticks(ticks, ["0" if v == 0 else f"{v:g}" for v in lams])
        ax.minorticks_off()
        ax.set_xlabel("λ (lambda_ml)")
        ax.set_ylabel("HR@1")
        ax.set_title(ds)
        ax.legend()
    fig.suptitle("Figure 6 - HR@1 against λ (95% bootstrap CI)", y=1.04)
    return fig
