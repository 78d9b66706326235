"""Processing (paper §5.1.1, §5.2.3): iterative k-core, contiguous ids, chronological leave-one-out split."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from bdlm_lib.data import DataError, load_dataset, table1
from bdlm_lib.data.prepare import kcore, process


def _frame(pairs):
    return pd.DataFrame({"user_raw": [str(u) for u, _ in pairs], "item_raw": [str(i) for _, i in pairs],
                         "timestamp": np.arange(len(pairs), dtype=np.int64)})


def _brute_force_core(pairs, k):
    """The largest edge set whose users and items all have >= k edges, by exhaustive search."""
    users = sorted({u for u, _ in pairs})
    items = sorted({i for _, i in pairs})
    best = set()
    for ru in range(len(users) + 1):
        for us in itertools.combinations(users, ru):
            for ri in range(len(items) + 1):
                for its in itertools.combinations(items, ri):
                    e = {(u, i) for u, i in pairs if u in us and i in its}
                    du = pd.Series([u for u, _ in e]).value_counts()
                    di = pd.Series([i for _, i in e]).value_counts()
                    if e and (du >= k).all() and (di >= k).all() and len(e) > len(best):
                        best = e
    return best


def test_kcore_cascades_on_a_hand_made_case():
    # k=2. Item z has one edge -> removed; then user C has one edge left -> removed; then item y
    # drops to one edge -> removed; the A/B x w square survives. A single pass would keep C and y.
    pairs = [("A", "x"), ("A", "w"), ("B", "x"), ("B", "w"), ("C", "y"), ("C", "z"), ("A", "y")]
    got = kcore(_frame(pairs), 2)
    assert set(zip(got["user_raw"], got["item_raw"])) == {("A", "x"), ("A", "w"), ("B", "x"), ("B", "w")}
    assert set(zip(got["user_raw"], got["item_raw"])) == _brute_force_core(pairs, 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcore_is_the_maximal_core_on_random_small_graphs(seed):
    rng = np.random.default_rng(seed)
    pairs = sorted({(f"u{rng.integers(5)}", f"i{rng.integers(5)}") for _ in range(16)})
    got = kcore(_frame(pairs), 3)
    got_set = set(zip(got["user_raw"], got["item_raw"]))
    assert got_set == _brute_force_core(pairs, 3)


@pytest.mark.parametrize("k", [2, 5, 8])
def test_kcore_property_on_fixture(k, fixture_dirs):
    from bdlm_lib.data.loaders import read_raw
    inter, _ = read_raw(fixture_dirs["tsv"], "tsv")
    inter = inter.drop_duplicates(["user_raw", "item_raw"])
    core = kcore(inter, k)
    assert (core["user_raw"].value_counts() >= k).all()
    assert (core["item_raw"].value_counts() >= k).all()
    assert len(kcore(core, k)) == len(core)         # a fixed point (maximality: brute force above)
    assert len(core) < len(inter)                   # the fixture does have something to remove


def test_split_and_ids(fixture_dirs, make_params, raw_data):
    ds = load_dataset(make_params(fixture_dirs["ml1m"]), verbose=False)
    allrows = pd.concat([ds.train.assign(s=0), ds.valid.assign(s=1), ds.test.assign(s=2)])
    # contiguous ids, raw maps saved and consistent
    assert sorted(allrows["user"].unique()) == list(range(ds.n_users))
    assert sorted(allrows["item"].unique()) == list(range(ds.n_items))
    assert ds.users["user"].tolist() == list(range(ds.n_users))
    assert ds.items["item"].tolist() == list(range(ds.n_items))
    # numeric raw ids are numbered in numeric order
    assert ds.users["raw_id"].astype(int).is_monotonic_increasing
    # every user and item >= 5 interactions after the 5-core
    assert (allrows["user"].value_counts() >= 5).all() and (allrows["item"].value_counts() >= 5).all()
    # one valid and one test row per user; leave-one-out by time
    assert ds.valid["user"].tolist() == list(range(ds.n_users)) == ds.test["user"].tolist()
    assert len(ds.train) + 2 * ds.n_users == ds.stats["interactions"]
    last_train = ds.train.groupby("user")["timestamp"].max()
    assert (ds.valid.set_index("user")["timestamp"] >= last_train).all()
    assert (ds.test.set_index("user")["timestamp"] >= ds.valid.set_index("user")["timestamp"]).all()
    # train chronological within each user, users in id order
    assert ds.train["user"].is_monotonic_increasing
    assert (ds.train.groupby("user")["timestamp"].diff().dropna() >= 0).all()
    seqs = ds.train_sequences()
    assert len(seqs) == ds.n_users and sum(map(len, seqs)) == len(ds.train)
    # the mapped-back interactions are exactly the raw ones that survive (untitled/rare dropped)
    uraw = ds.users.set_index("user")["raw_id"]
    iraw = ds.items.set_index("item")["raw_id"]
    back = set(zip(uraw[allrows["user"]].astype(int), iraw[allrows["item"]].astype(int)))
    raw_pairs = {(u, i) for u, i, _ in raw_data["interactions"]}
    assert back <= raw_pairs and len(back) == len(allrows)
    assert {"59", "60"}.isdisjoint(set(ds.items["raw_id"])) and "40" not in set(ds.users["raw_id"])


def test_timestamp_ties_keep_file_order():
    # user a: three items at the same second; file order b, c, d must be the time order
    pairs = [("a", it) for it in "bcdefg"] + [(u, it) for u in "hijkl" for it in "bcdefg"]
    inter = pd.DataFrame({"user_raw": [u for u, _ in pairs], "item_raw": [i for _, i in pairs],
                          "timestamp": np.zeros(len(pairs), dtype=np.int64)})
    titles = pd.DataFrame({"item_raw": list("bcdefg"), "title": [f"t {x}" for x in "bcdefg"]})
    proc = process(inter, titles, kcore_k=5)
    items = proc.items.set_index("item")["raw_id"]
    assert "".join(items[proc.train[proc.train["user"] == 0]["item"]]) == "bcde"
    assert items[proc.valid.loc[0, "item"]] == "f" and items[proc.test.loc[0, "item"]] == "g"
    # string ids: lexicographic numbering
    assert proc.users["raw_id"].tolist() == sorted(proc.users["raw_id"])


def test_table1_and_manifest(fixture_dirs, make_params):
    ds = load_dataset(make_params(fixture_dirs["tsv-gz"]), verbose=False)
    man = ds.manifest
    assert set(man["stats"]) == {"users", "items", "interactions", "sparsity"}
    assert man["stats"]["sparsity"] == pytest.approx(1 - 461 / (39 * 43))
    assert man["seed"] == 42 and man["params"]["data"]["kcore"] == 5
    assert set(man["inputs_sha256"]) == {"interactions.tsv.gz", "item_titles.tsv.gz"}
    assert all(len(h) == 64 for h in man["inputs_sha256"].values())
    t = table1([ds])
    assert t.loc[man["dataset"]].tolist() == [39, 43, 461, f"{100 * (1 - 461 / (39 * 43)):.2f}%"]


def test_sample_users_is_seeded(fixture_dirs, make_params):
    a = load_dataset(make_params(fixture_dirs["tsv"], data__sample_users=30, data__kcore=3), verbose=False)
    b = load_dataset(make_params(fixture_dirs["tsv"], data__sample_users=30, data__kcore=3,
                                 output_dir=str(a.path.parents[3] / "again")), verbose=False)
    assert a.n_users <= 30 and a.users["raw_id"].tolist() == b.users["raw_id"].tolist()


def test_cache_is_reused_and_rebuilt_on_recipe_change(fixture_dirs, make_params):
    p = make_params(fixture_dirs["tsv"])
    ds = load_dataset(p, verbose=False)
    mtime = (ds.path / "manifest.json").stat().st_mtime_ns
    assert load_dataset(p, verbose=False).path == ds.path
    assert (ds.path / "manifest.json").stat().st_mtime_ns == mtime          # reused
    p2 = make_params(fixture_dirs["tsv"], testset__sim_pool=5)
    ds2 = load_dataset(p2, verbose=False)
    assert ds2.manifest["params"]["testset"]["sim_pool"] == 5               # rebuilt


def test_kcore_leaving_too_little_for_leave_one_out():
    pairs = [(u, i) for u in "ab" for i in "xy"]
    with pytest.raises(DataError, match="data.kcore >= 3"):
        process(_frame(pairs), pd.DataFrame({"item_raw": ["x", "y"], "title": ["X", "Y"]}), kcore_k=2)
