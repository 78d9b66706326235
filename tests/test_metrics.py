"""Metrics against hand-computed values (HR@k, NDCG@k, MRR; threshold choice, P/R/F1, AUC)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score

from bdlm_lib.data import load_dataset
from bdlm_lib.metrics import (binary_metrics, bootstrap_ci, choose_threshold, evaluate,
                              positive_ranks, topk_metrics)

# 3 users x 3 candidates. user 0: positive scored highest (rank 0); user 1: second (rank 1);
# user 2: all tied -> ties broken by stored position, the positive sits last (rank 2).
FRAME = pd.DataFrame({"user": [0, 0, 0, 1, 1, 1, 2, 2, 2],
                      "item": [10, 11, 12, 20, 21, 22, 30, 31, 32],
                      "label": [0, 1, 0, 1, 0, 0, 0, 0, 1],
                      "position": [0, 1, 2, 0, 1, 2, 0, 1, 2]})
SCORES = np.array([0.2, 0.9, 0.1, 0.5, 0.7, 0.1, 0.3, 0.3, 0.3])


def test_ranks_and_topk_metrics_by_hand():
    assert positive_ranks(FRAME, SCORES).to_dict() == {0: 0, 1: 1, 2: 2}
    m = topk_metrics(FRAME, SCORES, ks=(1, 2, 3))
    assert m["HR@1"] == pytest.approx(1 / 3)
    assert m["HR@2"] == pytest.approx(2 / 3)
    assert m["HR@3"] == pytest.approx(1.0)
    assert m["NDCG@1"] == pytest.approx(1 / 3)
    assert m["NDCG@2"] == pytest.approx((1 + 1 / np.log2(3)) / 3)
    assert m["NDCG@3"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(4)) / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert m["n_users"] == 3


def test_ndcg_agrees_with_sklearn_without_ties():
    for u in (0, 1):
        g = FRAME["user"] == u
        one = topk_metrics(FRAME[g], SCORES[g.to_numpy()], ks=(2,))
        ref = ndcg_score(FRAME.loc[g, "label"].to_numpy()[None], SCORES[g.to_numpy()][None], k=2)
        assert one["NDCG@2"] == pytest.approx(ref)


def test_topk_refuses_groups_without_exactly_one_positive():
    bad = FRAME.copy()
    bad.loc[0, "label"] = 1
    with pytest.raises(ValueError, match="exactly one positive"):
        topk_metrics(bad, SCORES)
    with pytest.raises(ValueError, match="NaN"):
        topk_metrics(FRAME, np.where(np.arange(9) == 4, np.nan, SCORES))


def test_threshold_choice_and_binary_metrics_by_hand():
    # F1 per threshold: .9 -> .5, .8 -> .8, .7 -> .667, .6 -> .857 (best), .3 -> .75, .2 -> .667
    v_labels = np.array([1, 1, 0, 1, 0, 0])
    v_scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2])
    t = choose_threshold(v_labels, v_scores)
    assert t == pytest.approx(0.6)
    # test: predictions at >= .6 are [1, 1, 0, 0] -> TP 1, FP 1, FN 1
    m = binary_metrics(np.array([1, 0, 1, 0]), np.array([0.65, 0.61, 0.5, 0.1]), t)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(0.75)       # 3 of the 4 (pos, neg) pairs ordered right
    assert m["threshold"] == pytest.approx(0.6) and m["n"] == 4
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.ones(3), np.arange(3.0))


def test_evaluate_end_to_end(fixture_dirs, make_params):
    ds = load_dataset(make_params(fixture_dirs["tsv"]), verbose=False)
    oracle = evaluate(lambda f: f["label"].to_numpy(float), ds)
    assert oracle["topk"]["HR@1"] == 1.0 and oracle["binary"]["f1"] == 1.0 and oracle["binary"]["auc"] == 1.0
    const = evaluate(lambda f: np.zeros(len(f)), ds, split="test")
    pos0 = (ds.topk("test").query("label == 1")["position"] == 0).mean()
    assert const["topk"]["HR@1"] == pytest.approx(pos0)        # ties -> stored (shuffled) position
    assert const["binary"]["auc"] == 0.5
    m, preds = evaluate(lambda f: -f["item"].to_numpy(float), ds, max_users=10, return_predictions=True)
    assert m["topk"]["n_users"] == 10 and m["max_users"] == 10
    assert set(preds["task"]) == {"topk", "binary"} and len(preds) == 10 * 20 + 10 * 2
    assert set(m["topk"]) >= {"HR@1", "HR@2", "NDCG@1", "NDCG@2", "MRR", "n_users"}
    assert set(m["binary"]) == {"precision", "recall", "f1", "auc", "threshold", "n"}


def test_evaluate_ranks_more_users_than_it_scores_binary(fixture_dirs, make_params):
    ds = load_dataset(make_params(fixture_dirs["tsv"]), verbose=False)
    seen = []

    def score(f):       # records which users each task was asked about
        seen.append(("topk" if "position" in f else "binary", set(f["user"]), f))
        return -f["item"].to_numpy(float)
    m, preds = evaluate(score, ds, max_users=10, topk_users=25, return_predictions=True)
    # two calls: the top-K frame, then valid + test binary in ONE frame (an LLM shares each user's
    # history prefix over all four of the user's prompts)
    (_, top, _), (_, tbin, bframe) = seen
    assert len(top) == 25 and len(tbin) == 10
    vb, tb = ds.binary("valid", max_users=10), ds.binary("test", max_users=10)
    assert bframe[["user", "item", "label"]].reset_index(drop=True).equals(
        pd.concat([vb, tb], ignore_index=True)[["user", "item", "label"]])
    bp = preds.query("task == 'binary'").reset_index(drop=True)   # the test half, its own scores
    assert bp[["user", "item"]].equals(tb[["user", "item"]].reset_index(drop=True))
    assert np.array_equal(bp["score"], -tb["item"].to_numpy(float))
    assert tbin < top              # nested: the binary users are among the ranked ones
    assert m["topk"]["n_users"] == 25 and m["topk_users"] == 25 and m["max_users"] == 10
    assert m["binary"]["n"] == 10 * 2
    assert len(preds.query("task == 'topk'")) == 25 * 20
    # the first 10 ranked users score as they do in a max_users=10 run
    small, sp = evaluate(score, ds, max_users=10, return_predictions=True)
    assert small["topk_users"] == 10
    a = preds.query("task == 'topk' and user in @tbin").sort_values(["user", "item"])["score"].to_numpy()
    b = sp.query("task == 'topk'").sort_values(["user", "item"])["score"].to_numpy()
    assert np.array_equal(a, b)


def test_bootstrap_ci_brackets_the_mean():
    v = np.array([0, 1] * 50, dtype=float)
    lo, hi = bootstrap_ci(v, n_boot=500, seed=0)
    assert lo < 0.5 < hi and hi - lo < 0.3
    assert bootstrap_ci(v, n_boot=500, seed=0) == (lo, hi)
