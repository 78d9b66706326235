"""Embedding-alignment explorer: the plain functions and the real ipywidgets callbacks."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from safetensors.numpy import save_file

matplotlib.use("Agg")

from bdlm_lib.explorer import (alignment_distances, alignment_figure, build_explorer, find_runs,  # noqa: E402
                              load_spaces, nearest, neighbours, pca_map, search_items, synthetic_demo)


@pytest.fixture(scope="module")
def demo():
    return synthetic_demo()


def test_neighbours_identical_space_itself_first(demo):
    runs, titles, *_ = demo
    item = runs["synthetic/aligned"]["LLM"]["item"]
    spaces = {"A": {"user": item, "item": item}, "B": {"user": item, "item": item.copy()}}
    t = neighbours(spaces, "item", 17, k=5, labels=titles)
    assert list(t.columns) == ["A", "A cos", "B", "B cos"]
    assert t.loc[1, "A"] == titles[17] and t.loc[1, "A cos"] == 1.0
    assert list(t["A"]) == list(t["B"])  # identical spaces agree on every neighbour
    assert (np.diff(t["A cos"].to_numpy()) <= 1e-9).all()
    # duplicates of the query still leave the query first
    dup = np.vstack([item, item[17:18]])
    assert nearest(dup, 17, 2)[0].tolist() == [17, len(item)]


def test_aligned_spaces_share_neighbours_unaligned_do_not(demo):
    runs, *_ = demo
    def overlap(sp):
        a, b = nearest(sp["LLM"]["item"], 3, 10)[0], nearest(sp["domain"]["item"], 3, 10)[0]
        return len(set(a) & set(b))
    assert overlap(runs["synthetic/aligned"]) > overlap(runs["synthetic/before-joint"])
    d = alignment_distances(runs["synthetic/aligned"]).set_index(["kind", "pair"])
    assert np.isnan(d.loc[("item", "LLM-domain"), "mse"])  # 24-d vs 16-d: only CKA applies
    assert d.loc[("item", "LLM-M"), "cka"] > 0.8


def test_search_by_title(demo):
    _, titles, *_ = demo
    found = search_items(titles, titles[42].upper())
    assert 42 in found["item"].tolist() and found.loc[found["item"] == 42, "title"].item() == titles[42]
    assert search_items(titles, "no such title zzz").empty
    assert len(search_items(titles, "", limit=7)) == 7


def test_pca_map_and_history_figures(demo):
    runs, titles, genres, activity, history = demo
    fig = pca_map(runs["synthetic/aligned"], "item", selected=5, colour=genres, colour_name="genre")
    assert len(fig.axes) == 3 and fig.axes[0].get_title().startswith("LLM")
    fig = pca_map(runs["synthetic/aligned"], "user", selected=1, colour=activity)
    assert len(fig.axes) == 4  # three panels + the colour bar
    hist = alignment_figure({"steps": history})
    assert hist is not None and len(hist.axes[0].get_lines()) >= 2
    assert alignment_figure([]) is None


def test_load_spaces_from_run_folders(tmp_path):
    rng = np.random.default_rng(0)
    dom = tmp_path / "ml1m" / "domain" / "lightgcn"
    dom.mkdir(parents=True)
    save_file({"user": rng.normal(size=(4, 3)).astype(np.float32),
               "item": rng.normal(size=(6, 3)).astype(np.float32)}, str(dom / "embeddings.safetensors"))
    joint = tmp_path / "ml1m" / "bdlm" / "v1"
    joint.mkdir(parents=True)
    for f, d in (("llm_rows", 5), ("domain", 5), ("sharing", 5)):
        save_file({"user": rng.normal(size=(4, d)).astype(np.float32),
                   "item": rng.normal(size=(6, d)).astype(np.float32)}, str(joint / f"{f}.safetensors"))
    assert list(load_spaces(dom)) == ["domain"]
    assert list(load_spaces(joint)) == ["LLM", "domain", "M"]
    assert set(find_runs(tmp_path, "ml1m")) == {"domain/lightgcn", "bdlm/v1"}
    with pytest.raises(FileNotFoundError, match="no embeddings"):
        load_spaces(tmp_path)


def test_explorer_callbacks(demo):
    runs, titles, genres, activity, history = demo
    box = build_explorer(runs, titles, item_colour=genres, user_colour=activity, colour_name="genre",
                         histories={"synthetic/aligned": history})
    ex = box.explorer
    first_table, first_map = ex.table.value, ex.map.value
    assert titles[0] in first_table and first_map[:4] == b"\x89PNG" and ex.history.value[:4] == b"\x89PNG"
    ex.search.value = titles[42]
    assert ex.select.value == 42 and ex.select.options[0][1] == 42
    assert ex.table.value != first_table and ex.map.value != first_map
    assert f"item 42" in ex.table.value
    ex.kind.value = "user"
    assert ex.select.value is not None and "user" in ex.table.value
    ex.run.value = "synthetic/before-joint"
    assert ex.history.value == b""  # no history for that run
    ex.kind.value, ex.search.value = "item", "zzz nothing"
    assert ex.select.value is None and "nothing matches" in ex.status.value
