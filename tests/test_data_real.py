"""Real checks on ../shared/data (BDLM_DATA_DIR): ML-1M with the smoke preset and in full, and the
two Amazon folders through the loader + processing (their published counts are known)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chisquare

from bdlm_lib import load_params
from bdlm_lib.data import load_dataset, table1
from bdlm_lib.data.loaders import DataError, read_raw
from bdlm_lib.data.prepare import process
from conftest import REAL_DATA

pytestmark = pytest.mark.skipif(not (REAL_DATA / "movielens-1m").is_dir(),
                                reason=f"no shared data at {REAL_DATA}")
RATINGS_SHA256 = "6df956e98ff6b8edfb61c2824572e79e2aa9ab544be01b301d5d5b0132a3d98e"  # SOURCES.md


@pytest.fixture(scope="module")
def ml1m_full(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    p = load_params("ml1m", "smoke", {"output_dir": str(out), "data_dir": str(REAL_DATA),
                                      "data.sample_users": None})
    return load_dataset(p, verbose=False)


def test_ml1m_smoke_preset(tmp_path):
    p = load_params("ml1m", "smoke", {"output_dir": str(tmp_path), "data_dir": str(REAL_DATA)})
    ds = load_dataset(p, verbose=False)
    assert ds.n_users == 150 and ds.noun == "movies"
    assert ds.manifest["inputs_sha256"]["ratings.dat.gz"] == RATINGS_SHA256
    rows = pd.concat([ds.train, ds.valid, ds.test])
    # the sample is drawn from the 5-core's users with all their interactions: users keep >= 5,
    # an item may fall below 5 inside the sample
    assert (rows["user"].value_counts() >= 5).all() and rows["item"].nunique() == ds.n_items
    assert ds.manifest["counts"]["dropped_by_user_sample"] > 0
    assert ds.items["title"].str.match(r".+ \(\d{4}\)$").all()          # "Toy Story (1995)"
    for split in ("valid", "test"):
        tk = ds.topk(split)
        assert len(tk) == 20 * 150 and (tk.groupby("user")["label"].sum() == 1).all()
    assert len(ds.topk("test", max_users=40)["user"].unique()) == 40


def test_ml1m_full_table1(ml1m_full):
    # the published 5-core of these ratings (SOURCES.md, source C): 6,040 users, 3,416 movies
    s = ml1m_full.stats
    assert (s["users"], s["items"], s["interactions"]) == (6040, 3416, 999611)
    assert s["sparsity"] == pytest.approx(1 - 999611 / (6040 * 3416))
    assert table1([ml1m_full]).loc["ml1m", "sparsity"] == "95.16%"


def test_ml1m_positive_position_is_uniform(ml1m_full):
    pos = pd.concat([ml1m_full.topk(s) for s in ("valid", "test")])
    pos = pos.loc[pos["label"] == 1, "position"].to_numpy()
    counts = np.bincount(pos, minlength=20)
    assert chisquare(counts).pvalue > 1e-4, counts


def test_ml1m_negatives_follow_popularity_and_titles(ml1m_full):
    ds = ml1m_full
    tk = ds.topk("test")
    cnt = np.bincount(ds.train["item"].to_numpy(), minlength=ds.n_items)
    pop_negs = cnt[tk.loc[tk["source"] == "pop", "item"].to_numpy()]
    uniform_negs = cnt[ds.binary("test").query("label == 0")["item"].to_numpy()]
    assert pop_negs.mean() > 1.5 * uniform_negs.mean()        # popularity-biased, as specified
    assert (tk["source"] == "sim").sum() > 8 * ds.n_users     # the pool rarely runs short
    # a similarity negative shares a title word (or the year) with the positive
    titles = ds.items["title"].str.lower().str.findall(r"\w\w+").map(set).to_numpy()
    pos = tk[tk["label"] == 1].set_index("user")["item"]
    sim = tk[tk["source"] == "sim"]
    shared = [bool(titles[i] & titles[pos[u]]) for u, i in zip(sim["user"], sim["item"])]
    assert np.mean(shared) == 1.0


@pytest.mark.parametrize("name,counts", [("amazon-health", (38329, 18427, 343831)),
                                         ("amazon-beauty", (22332, 12086, 198215))])
def test_amazon_folders_load_and_are_already_5core(name, counts):
    folder = REAL_DATA / name
    if not folder.is_dir():
        pytest.skip(f"no {folder}")
    inter, titles = read_raw(folder, "tsv")
    assert not titles["title"].str.contains("&amp;|&quot;|\t|\n").any()   # unescaped, one line
    proc = process(inter, titles, kcore_k=5)
    s = proc.stats
    assert (s["users"], s["items"], s["interactions"]) == counts   # SOURCES.md counts
    assert proc.counts["dropped_kcore"] == 0 and proc.counts["dropped_untitled"] == 0
    assert (proc.train.groupby("user")["timestamp"].diff().dropna() >= 0).all()


def test_amazon_top_items_subset_is_dense_and_seeded():
    """The cpu preset's Amazon subset: the 2000 most-interacted items, 5-core, all their users."""
    folder = REAL_DATA / "amazon-beauty"
    if not folder.is_dir():
        pytest.skip(f"no {folder}")
    inter, titles = read_raw(folder, "tsv")
    full = process(inter, titles, kcore_k=5)
    sub = process(inter, titles, kcore_k=5, top_items=2000)
    n_full = np.bincount(pd.concat([full.train, full.valid, full.test])["item"], minlength=full.stats["items"])
    kept = set(sub.items["raw_id"])
    assert len(kept) <= 2000 and kept <= set(full.items["raw_id"])
    # every kept item is among the 2000 most-interacted ones of the whole data
    cutoff = np.sort(n_full)[::-1][1999]
    raw_n = dict(zip(full.items["raw_id"], n_full))
    assert min(raw_n[r] for r in kept) >= cutoff
    rows = pd.concat([sub.train, sub.valid, sub.test])
    assert (rows["user"].value_counts() >= 5).all() and (rows["item"].value_counts() >= 5).all()
    # dense enough for a collaborative model: a 1500-user uniform sample keeps ~2 per item
    sampled = process(inter, titles, 5, sample_users=1500).counts["avg_per_item"]
    assert sub.counts["avg_per_item"] > 20 and sampled < 3
    assert sub.counts["dropped_by_top_items"] > 0
    again = process(inter, titles, kcore_k=5, top_items=2000)
    assert again.items["raw_id"].tolist() == sub.items["raw_id"].tolist()
    assert again.train.equals(sub.train)
    with pytest.raises(DataError, match="data.top_items=0"):
        process(inter, titles, kcore_k=5, top_items=0)
