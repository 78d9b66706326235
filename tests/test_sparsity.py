"""The sparsity knobs keep the evaluation fixed, and the bucket breakdowns partition the users."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bdlm_lib.data import load_dataset
from bdlm_lib.data.dataset import SETS
from bdlm_lib.domain import NegativeSampler, build_domain_model
from bdlm_lib.domain.trainer import evaluate_domain
from bdlm_lib.params import load_params


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return str(tmp_path_factory.mktemp("out"))


def prepared(out, **over):
    p = load_params("ml1m", "smoke", overrides={"output_dir": out, "domain.progress": False, **over})
    return p, load_dataset(p, verbose=False)


def same_eval_files(a, b):
    for name in ("valid", "test", *SETS):
        assert (a.path / f"{name}.parquet").read_bytes() == (b.path / f"{name}.parquet").read_bytes(), name


@pytest.mark.parametrize("keep", [0.5, 0.25, 3])
def test_train_keep_thins_train_only_and_keeps_the_most_recent(out, keep):
    _, full = prepared(out)
    _, thin = prepared(out, **{"data.train_keep": keep})
    assert thin.path != full.path
    same_eval_files(full, thin)                      # the paired evaluation: byte-identical sets
    n_full = full.train.groupby("user").size()
    n_thin = thin.train.groupby("user").size().reindex(n_full.index, fill_value=0)
    want = np.minimum(n_full, np.maximum(1, np.ceil(n_full * keep))) if keep <= 1 else np.minimum(n_full, keep)
    assert (n_thin.to_numpy() == want.to_numpy()).all()
    # kept + dropped = the full train split, and what is kept is each user's most recent
    both = pd.concat([thin.train, thin.dropped]).sort_values(["user", "timestamp", "item"]).reset_index(drop=True)
    ref = full.train.sort_values(["user", "timestamp", "item"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(both[ref.columns], ref)
    last_dropped = thin.dropped.groupby("user")["timestamp"].max()
    first_kept = thin.train.groupby("user")["timestamp"].min().reindex(last_dropped.index)
    assert (last_dropped <= first_kept).all()


def test_uniform_order_is_seeded_and_differs_from_recent(out):
    _, rec = prepared(out, **{"data.train_keep": 0.5})
    _, uni = prepared(out, **{"data.train_keep": 0.5, "data.train_keep_order": "uniform"})
    _, uni2 = prepared(out + "/again", **{"data.train_keep": 0.5, "data.train_keep_order": "uniform"})
    assert len(uni.train) == len(rec.train) and not uni.train.equals(rec.train)
    assert uni.train.equals(uni2.train)


def test_cold_items_have_no_training_interaction_and_stay_test_targets(out):
    _, full = prepared(out)
    _, cold = prepared(out, **{"data.cold_items": 0.3})
    same_eval_files(full, cold)
    c = cold.cold_items
    assert len(c) == round(0.3 * full.n_items)
    assert not cold.train["item"].isin(c).any()
    assert set(cold.dropped["item"]) <= set(c) and len(cold.dropped) == full.train["item"].isin(c).sum()
    assert cold.test["item"].isin(c).any()           # some held-out items are cold
    # a cold item is never drawn as a training negative
    sampler = NegativeSampler(cold.train["user"].to_numpy(), cold.train["item"].to_numpy(), cold.n_items,
                              exclude=c)
    draws = sampler.sample(np.repeat(cold.train["user"].unique(), 50), 4, np.random.default_rng(0))
    assert not np.isin(draws, c).any()


def test_bucket_breakdowns_partition_the_users(out):
    p, ds = prepared(out, **{"data.train_keep": 0.5})
    model = build_domain_model("pop", ds.n_users, ds.n_items, p, ds=ds)
    m, preds = evaluate_domain(model, ds, p, return_predictions=True)
    total = m["topk"]
    for name in ("item_popularity", "user_history"):
        table = m["buckets"][name]
        assert list(table) == list(dict.fromkeys(table))        # every bucket, once
        n = sum(b["n_users"] for b in table.values())
        assert n == total["n_users"]
        for k in ("HR@1", "HR@2", "NDCG@10"):
            assert sum(b.get(k, 0.0) * b["n_users"] for b in table.values()) == pytest.approx(total[k] * n)
    # the user-history buckets are the training-history lengths of the thinned data
    hist = ds.train.groupby("user").size()
    topk = preds[preds["task"] == "topk"].drop_duplicates("user").set_index("user")
    short = topk.index[topk["user_history"] == "0-4"]
    assert (hist.reindex(short, fill_value=0) < 5).all() and (hist.reindex(topk.index.difference(short)) >= 5).all()
