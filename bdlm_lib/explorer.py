"""The embedding-alignment explorer: do the LLM's id-token rows, the domain model's embeddings and
the information sharing module M agree about which users/items are alike (paper §4.3, Eq. 7-8)?

Plain, unit-tested functions (load_spaces, search_items, neighbours, pca_coords/pca_map,
alignment_distances, alignment_figure) and a thin ipywidgets builder, `build_explorer`, whose
callbacks only call them. A space is {"user": [n_users, d], "item": [n_items, d]}; the three spaces
may have different d (cosine neighbours and PCA are computed per space).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

# space name -> files that may hold it (first found wins), as the run folders save them
SPACE_FILES = {
    "LLM": ("llm_rows.safetensors",),
    "domain": ("domain.safetensors", "embeddings.safetensors"),
    "M": ("sharing.safetensors",),
}
Spaces = Mapping[str, Mapping[str, np.ndarray]]


def load_spaces(run_dir: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Whatever of LLM / domain / M the run folder holds (safetensors only, never pickles)."""
    from safetensors.numpy import load_file
    run_dir = Path(run_dir)
    spaces = {}
    for name, files in SPACE_FILES.items():
        for f in files:
            if (run_dir / f).exists():
                t = load_file(str(run_dir / f))
                if "user" not in t or "item" not in t:
                    raise ValueError(f"{run_dir / f}: needs tensors 'user' and 'item' (has {sorted(t)})")
                spaces[name] = {"user": t["user"].astype(np.float32), "item": t["item"].astype(np.float32)}
                break
    if not spaces:
        raise FileNotFoundError(f"{run_dir}: no embeddings ({', '.join(f for fs in SPACE_FILES.values() for f in fs)})")
    return spaces


def find_runs(output_dir: str | Path, dataset: str) -> dict[str, Path]:
    """Run folders under <output_dir>/<dataset>/ holding embeddings, newest first, named '<kind>/<run>'."""
    root = Path(output_dir) / Path(dataset).name
    files = {f for fs in SPACE_FILES.values() for f in fs}
    found = [d for d in root.glob("*/*") if d.is_dir() and any((d / f).exists() for f in files)]
    found.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    return {f"{d.parent.name}/{d.name}": d for d in found}


def search_items(titles: Sequence[str], query: str, limit: int = 50) -> pd.DataFrame:
    """Items whose title contains `query` (case-insensitive); empty query = the first `limit`."""
    t = pd.Series(list(titles), dtype=str)
    hit = t.str.contains(query.strip(), case=False, regex=False) if query.strip() else pd.Series(True, index=t.index)
    idx = np.flatnonzero(hit.to_numpy())[:limit]
    return pd.DataFrame({"item": idx, "title": t.iloc[idx].to_numpy()})


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def neighbours(spaces: Spaces, kind: str, index: int, k: int = 10,
               labels: Sequence[str] | None = None) -> pd.DataFrame:
    """The k nearest `kind` rows ("user"/"item") to row `index` under cosine, per space, side by
    side: columns '<space>' (label) and '<space> cos'; rank 1 is the row itself (cos 1)."""
    out = {}
    for name, sp in spaces.items():
        top, cos = nearest(sp[kind], index, k)
        out[name] = [labels[j] if labels is not None else f"{kind} {j}" for j in top]
        out[f"{name} cos"] = np.round(cos, 3)
    return pd.DataFrame(out, index=pd.RangeIndex(1, len(top) + 1, name="rank"))


def nearest(x: np.ndarray, index: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Row ids and cosines of the k rows nearest row `index` (itself first)."""
    x = _unit(np.asarray(x, dtype=np.float64))
    if not 0 <= index < len(x):
        raise IndexError(f"row {index} out of range (0..{len(x) - 1})")
    cos = x @ x[index]
    cos[index] = np.inf  # itself first, even among exact duplicates
    top = np.argsort(-cos, kind="stable")[:k]
    cos[index] = 1.0
    return top, cos[top]


def pca_coords(x: np.ndarray, max_points: int | None = None, seed: int = 0) -> np.ndarray:
    """2-D PCA of the rows (all rows are projected; the fit uses at most `max_points`)."""
    from sklearn.decomposition import PCA
    x = np.asarray(x, dtype=np.float64)
    fit = x
    if max_points and len(x) > max_points:
        fit = x[np.random.default_rng(seed).choice(len(x), max_points, replace=False)]
    return PCA(n_components=2, random_state=seed).fit(fit).transform(x)


def pca_map(spaces: Spaces, kind: str, selected: int | None = None, colour=None,
            colour_name: str = "popularity", coords: Mapping[str, np.ndarray] | None = None,
            highlight: Sequence[int] = ()):
    """One PCA panel per space: points coloured by `colour` (numbers: log scale, e.g. popularity;
    strings: categories, e.g. ML-1M genres), the selection as a red star, `highlight` circled."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    sns.set_theme(style="white")
    names = list(spaces)
    # constrained layout: the colour bar (or legend) gets its own room right of the last map
    # instead of being drawn over it; one colour scale for all maps, so colours compare across them
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names) + 1.2, 5.0), squeeze=False,
                             layout="constrained")
    numeric = colour is not None and np.issubdtype(np.asarray(colour).dtype, np.number)
    values = np.log1p(np.asarray(colour, float)) if numeric else None
    sc = None
    for ax, name in zip(axes[0], names):
        xy = coords[name] if coords is not None else pca_coords(spaces[name][kind])
        if colour is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=12, c="0.6", lw=0)
        elif numeric:
            sc = ax.scatter(xy[:, 0], xy[:, 1], s=12, c=values, cmap="viridis", lw=0,
                            vmin=float(values.min()), vmax=float(values.max()))
        else:
            cats = pd.Series(colour, dtype=str)
            top = cats.value_counts().index[:8]
            cats = cats.where(cats.isin(top), "other")
            sns.scatterplot(x=xy[:, 0], y=xy[:, 1], hue=cats.to_numpy(), s=14, linewidth=0, ax=ax,
                            legend=name == names[-1], palette="tab10")
            if name == names[-1]:
                ax.legend(title=colour_name, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        hl = [j for j in highlight if j != selected]
        if hl:
            ax.scatter(xy[hl, 0], xy[hl, 1], s=60, facecolors="none", edgecolors="black", lw=1.2)
        if selected is not None:
            ax.scatter(xy[selected, 0], xy[selected, 1], s=260, marker="*", c="red", edgecolors="black", zorder=5)
        ax.set_title(f"{name} ({spaces[name][kind].shape[1]}-d)", fontsize=12)
        ax.set_xticks([]), ax.set_yticks([])
    if sc is not None:
        fig.colorbar(sc, ax=axes[0].tolist(), label=f"log(1 + {colour_name})", shrink=0.85)
    fig.suptitle(f"PCA of the {kind} embeddings per space" + (f" - {kind} {selected}" if selected is not None else ""),
                 fontsize=13)
    return fig


def alignment_distances(spaces: Spaces, max_rows: int = 2000) -> pd.DataFrame:
    """Per pair of spaces and kind: mean squared distance (same d only; the quantity of Eq. 7-8)
    and linear CKA (any d: 1 = same geometry up to rotation and scale)."""
    names, rows = list(spaces), []
    for kind in ("user", "item"):
        for a in range(len(names)):
            for b in range(a + 1, len(names)):
                x = np.asarray(spaces[names[a]][kind], float)[:max_rows]
                y = np.asarray(spaces[names[b]][kind], float)[:max_rows]
                xc, yc = x - x.mean(0), y - y.mean(0)
                cka = np.linalg.norm(yc.T @ xc) ** 2 / max(np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc), 1e-12)
                mse = float(np.mean((x - y) ** 2)) if x.shape == y.shape else float("nan")
                rows.append({"kind": kind, "pair": f"{names[a]}-{names[b]}", "mse": mse, "cka": float(cka)})
    return pd.DataFrame(rows)


def alignment_figure(history):
    """The distances over training steps: `history` = a list of per-step dicts or the joint
    trainer's history.json ({"steps": [...]}); every key starting with 'dist' is drawn."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    steps = history.get("steps", []) if isinstance(history, Mapping) else list(history or [])
    df = pd.DataFrame(steps)
    cols = [c for c in df.columns if str(c).startswith("dist")]
    if df.empty or not cols:
        return None
    x = df["step"] if "step" in df else pd.Series(np.arange(len(df)))
    long = df[cols].assign(step=x.to_numpy()).melt("step", var_name="distance", value_name="MSE")
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.lineplot(data=long, x="step", y="MSE", hue="distance", ax=ax)
    ax.set_yscale("log")
    ax.set_title("Alignment distance over training steps")
    fig.tight_layout()
    return fig


def fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def synthetic_demo(n_users: int = 60, n_items: int = 150, seed: int = 0):
    """A deterministic stand-in when no run exists (the notebook must always run): items in 6
    genres; two 'runs' whose LLM / domain / M spaces are aligned or not. Returns
    (runs, titles, item_genres, user_activity, history)."""
    rng = np.random.default_rng(seed)
    genres = np.array(["Comedy", "Drama", "Action", "Horror", "Romance", "Sci-Fi"])
    g = rng.integers(0, len(genres), n_items)
    centres = rng.normal(size=(len(genres), 8)) * 2
    z_item = centres[g] + rng.normal(size=(n_items, 8)) * 0.6
    z_user = centres[rng.integers(0, len(genres), n_users)] + rng.normal(size=(n_users, 8))
    w_llm, w_dom = rng.normal(size=(8, 24)), rng.normal(size=(8, 16))

    def space(z_u, z_i, w, noise):
        return {"user": (z_u @ w + rng.normal(size=(len(z_u), w.shape[1])) * noise).astype(np.float32),
                "item": (z_i @ w + rng.normal(size=(len(z_i), w.shape[1])) * noise).astype(np.float32)}
    llm = space(z_user, z_item, w_llm, 0.5)
    aligned = {"LLM": llm, "domain": space(z_user, z_item, w_dom, 0.5),
               "M": {k: (v + rng.normal(size=v.shape) * 0.3).astype(np.float32) for k, v in llm.items()}}
    before = {"LLM": space(rng.normal(size=(n_users, 8)), rng.normal(size=(n_items, 8)), w_llm, 1.0),
              "domain": aligned["domain"], "M": aligned["M"]}
    words = ["Story", "Night", "Return", "Island", "Secret", "City", "Dream", "Storm"]
    titles = [f"The {words[j % len(words)]} of {genres[g[j]]} {j}" for j in range(n_items)]
    steps = np.arange(0, 200, 10)
    history = [{"step": int(s), "dist_llm_M": float(2 * np.exp(-s / 60) + 0.1),
                "dist_domain_M": float(1.5 * np.exp(-s / 80) + 0.15)} for s in steps]
    runs = {"synthetic/aligned": aligned, "synthetic/before-joint": before}
    return runs, titles, genres[g], rng.poisson(20, n_users), history


class Explorer:
    """State + callbacks of the widget UI; `container` is what a notebook displays."""

    def __init__(self, runs: Mapping[str, str | Path | Spaces], titles: Sequence[str], item_colour=None,
                 user_colour=None, colour_name: str = "popularity", histories: Mapping | None = None,
                 k: int = 10):
        import ipywidgets as W
        self.runs, self.titles, self.k = dict(runs), list(titles), k
        self.colour = {"item": item_colour, "user": user_colour}
        self.colour_name, self.histories = colour_name, dict(histories or {})
        self._spaces: dict = {}
        self._coords: dict = {}
        self.run = W.Dropdown(options=list(self.runs), description="run").add_class("bdlm-run")
        self.kind = W.ToggleButtons(options=["item", "user"], description="show").add_class("bdlm-kind")
        self.search = W.Text(placeholder="title contains…", description="search").add_class("bdlm-search")
        self.select = W.Select(rows=8, description="select", layout=W.Layout(width="60%")).add_class("bdlm-select")
        self.table = W.HTML().add_class("bdlm-neighbours")
        self.map = W.Image(format="png").add_class("bdlm-map")
        self.history = W.Image(format="png").add_class("bdlm-history")
        self.status = W.HTML().add_class("bdlm-status")
        self.run.observe(lambda _: self._on_run(), "value")
        self.kind.observe(lambda _: self._on_kind(), "value")
        self.search.observe(lambda _: self._on_query(), "value")
        self.select.observe(lambda _: self._on_select(), "value")
        self.container = W.VBox([W.HTML("<b>Embedding-alignment explorer</b>"), W.HBox([self.run, self.kind]),
                                 self.search, self.select, self.status, self.table, self.map, self.history])
        self._on_run()

    def spaces(self) -> dict:
        name = self.run.value
        if name not in self._spaces:
            src = self.runs[name]
            self._spaces[name] = dict(src) if isinstance(src, Mapping) else load_spaces(src)
        return self._spaces[name]

    def labels(self, kind: str) -> list[str]:
        n = len(next(iter(self.spaces().values()))[kind])
        return list(self.titles) if kind == "item" else [f"user {u}" for u in range(n)]

    def _on_run(self) -> None:
        hist = self.histories.get(self.run.value)
        fig = alignment_figure(hist) if hist is not None else None
        self.history.value = fig_png(fig) if fig is not None else b""
        self._on_query()

    def _on_kind(self) -> None:
        if self.search.value:  # a title query means nothing for users: clear it (fires _on_query)
            self.search.value = ""
        else:
            self._on_query()

    def _on_query(self) -> None:
        kind = self.kind.value
        if kind == "item":
            found = search_items(self.titles, self.search.value)
            opts = [(f"{t}  [{i}]", int(i)) for i, t in zip(found["item"], found["title"])]
        else:
            labels = self.labels("user")
            q = self.search.value.strip().lower()
            opts = [(lab, u) for u, lab in enumerate(labels) if q in lab.lower()][:50]
        self.select.options = opts
        self.select.value = opts[0][1] if opts else None
        self._on_select()

    def _on_select(self) -> None:
        idx, kind = self.select.value, self.kind.value
        if idx is None:
            self.status.value, self.table.value, self.map.value = "<i>nothing matches</i>", "", b""
            return
        sp = self.spaces()
        table = neighbours(sp, kind, int(idx), self.k, self.labels(kind))
        self.table.value = f"<b>{kind} {idx}</b> - nearest under each space (cosine)" + table.to_html()
        key = (self.run.value, kind)
        if key not in self._coords:  # PCA once per run and kind; a new selection only re-draws
            self._coords[key] = {n: pca_coords(s[kind], max_points=5000) for n, s in sp.items()}
        near = nearest(next(iter(sp.values()))[kind], int(idx), self.k)[0]  # circled: the first space's
        fig = pca_map(sp, kind, int(idx), self.colour.get(kind), self.colour_name if kind == "item" else "activity",
                      coords=self._coords[key], highlight=near)
        self.map.value = fig_png(fig)
        self.status.value = f"run <code>{self.run.value}</code>, {kind} {idx}"


def build_explorer(runs: Mapping[str, str | Path | Spaces], titles: Sequence[str], item_colour=None,
                   user_colour=None, colour_name: str = "popularity", histories: Mapping | None = None,
                   k: int = 10):
    """The ipywidgets container: run dropdown, item/user toggle, title search, a Select of the
    matches, the side-by-side neighbour table, the PCA map and the alignment history.
    `runs`: name -> run folder (loaded lazily with load_spaces) or a spaces dict.
    The Explorer (state and callbacks) is reachable as `container.explorer`."""
    ex = Explorer(runs, titles, item_colour, user_colour, colour_name, histories, k)
    ex.container.explorer = ex
    return ex.container
