"""The shared evaluation sets (paper §5.2.3): 20 candidates (1 positive + 10 popularity + 9 title-
similarity negatives), binary 1:1, never a touched item, seeded shuffle, persisted byte-identically."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics.pairwise import cosine_similarity

from bdlm_lib.data import load_dataset
from bdlm_lib.data.dataset import SETS
from bdlm_lib.data.testsets import build_testsets, check_no_leakage, title_vectors


@pytest.fixture(scope="module")
def ds_pair(fixture_dirs, tmp_path_factory):
    from bdlm_lib import load_params
    out = tmp_path_factory.mktemp("ts")

    def make(seed, name):
        p = load_params(str(fixture_dirs["tsv"]), "smoke",
                        {"output_dir": str(out / name), "seed": seed, "data.sample_users": None})
        return load_dataset(p, verbose=False)
    return make(42, "a"), make(42, "b"), make(7, "c")


def _touched(ds):
    rows = pd.concat([ds.train, ds.valid, ds.test])
    return rows.groupby("user")["item"].apply(set).to_dict()


@pytest.mark.parametrize("split", ["valid", "test"])
def test_topk_structure_and_no_touched_negatives(ds_pair, split):
    ds = ds_pair[0]
    tk = ds.topk(split)
    held = getattr(ds, split).set_index("user")["item"]
    touched = _touched(ds)
    assert len(tk) == 20 * ds.n_users
    for u, g in tk.groupby("user"):
        assert g["position"].tolist() == list(range(20))
        assert g["label"].sum() == 1 and g["item"].nunique() == 20
        assert g.loc[g["label"] == 1, "item"].item() == held[u]
        assert (g.loc[g["label"] == 1, "source"] == "pos").all()
        negs = set(g.loc[g["label"] == 0, "item"])
        assert not negs & touched[u], f"user {u}: a negative the user interacted with"
        n_sim = int((g["source"] == "sim").sum())
        n_pop = int((g["source"] == "pop").sum())
        # 10 by popularity + 9 by similarity, unless the similarity pool runs short
        assert n_sim <= 9 and n_pop == 19 - n_sim
    check_no_leakage(ds.train, {k: ds._set(k) for k in SETS}, ds.valid, ds.test)


def test_similarity_negatives_are_the_most_similar_untouched_items(ds_pair):
    """Recomputed independently: dense cosine of the TF-IDF titles, ranked by (-sim, id)."""
    ds = ds_pair[0]
    sim = cosine_similarity(title_vectors(ds.titles))
    touched = _touched(ds)
    short = full = 0
    for split in ("valid", "test"):
        tk = ds.topk(split)
        for u, g in tk.groupby("user"):
            p = int(g.loc[g["label"] == 1, "item"].item())
            order = sorted((j for j in range(ds.n_items) if j != p and j not in touched[u] and sim[p, j] > 1e-12),
                           key=lambda j: (-round(sim[p, j], 12), j))
            want = set(order[:9])
            got = set(g.loc[g["source"] == "sim", "item"])
            assert got == want, f"{split} user {u}"
            short += len(want) < 9
            full += len(want) == 9
    assert full > 0 and short > 0   # the fixture exercises both the normal and the short pool


def test_shortfall_is_filled_by_popularity(ds_pair):
    ds = ds_pair[0]
    unique = int(ds.items.loc[ds.items["raw_id"] == "7", "item"].iloc[0])  # title "Zyzzyva"
    tk = pd.concat([ds.topk("valid"), ds.topk("test")])
    pos = tk[(tk["label"] == 1) & (tk["item"] == unique)]
    assert len(pos) > 0
    # no word shared with any title: no similarity negatives, 19 popularity ones
    for split in ("valid", "test"):
        t = ds.topk(split)
        us = t[(t["label"] == 1) & (t["item"] == unique)]["user"]
        for u in us:
            assert (t[t["user"] == u]["source"] == "pop").sum() == 19


def test_binary_sets(ds_pair):
    ds = ds_pair[0]
    touched = _touched(ds)
    for split in ("valid", "test"):
        b = ds.binary(split)
        held = getattr(ds, split).set_index("user")["item"]
        assert len(b) == 2 * ds.n_users and b["label"].sum() == ds.n_users
        for u, g in b.groupby("user"):
            assert g["label"].tolist() == [1, 0] and g["item"].iloc[0] == held[u]
            assert g["item"].iloc[1] not in touched[u]


def test_same_seed_gives_byte_identical_parquet_and_other_seed_differs(ds_pair):
    a, b, c = ds_pair
    for name in SETS + ("train", "valid", "test", "items", "users"):
        assert (a.path / f"{name}.parquet").read_bytes() == (b.path / f"{name}.parquet").read_bytes(), name
    for name in SETS:
        assert (a.path / f"{name}.parquet").read_bytes() != (c.path / f"{name}.parquet").read_bytes(), name
    ta, tc = a.topk("test"), c.topk("test")
    assert (ta["item"].to_numpy() != tc["item"].to_numpy()).any()
    # the split itself does not depend on the seed (no user sampling here)
    pd.testing.assert_frame_equal(a.train, c.train)


def test_positive_position_is_shuffled(ds_pair):
    pos = pd.concat([d.topk(s) for d in ds_pair for s in ("valid", "test")])
    pos = pos.loc[pos["label"] == 1, "position"]
    assert pos.nunique() >= 12                         # 234 draws over 20 slots
    assert (pos == 0).mean() < 0.2


def test_build_testsets_refuses_too_few_items():
    train = pd.DataFrame({"user": [0, 0, 0], "item": [0, 1, 2], "timestamp": [1, 2, 3]})
    valid = pd.DataFrame({"user": [0], "item": [3], "timestamp": [4]})
    test = pd.DataFrame({"user": [0], "item": [4], "timestamp": [5]})
    with pytest.raises(ValueError, match="testset.n_candidates=20"):
        build_testsets(train, valid, test, [f"t{i}" for i in range(10)])


def test_leakage_check_catches_a_leak(ds_pair):
    ds = ds_pair[0]
    bad = ds.topk("test").copy()
    first_train_item = int(ds.train.loc[ds.train["user"] == 0, "item"].iloc[0])
    bad.loc[(bad["user"] == 0) & (bad["label"] == 0), "item"] = first_train_item
    with pytest.raises(AssertionError, match="negative the user interacted with"):
        check_no_leakage(ds.train, {"test_topk": bad})
    bad = ds.topk("test").copy()
    bad.loc[(bad["user"] == 0) & (bad["label"] == 1), "item"] = first_train_item
    with pytest.raises(AssertionError, match="held-out item in the user's train"):
        check_no_leakage(ds.train, {"test_topk": bad})
