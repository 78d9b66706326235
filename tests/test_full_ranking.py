"""Full-catalogue ranking (eval.mode: full): the metric against scikit-learn and a hand-computed toy
case, the ranked set (no item the user touched before), and a real domain run."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score

from bdlm_lib.data import load_dataset
from bdlm_lib.domain import run_domain
from bdlm_lib.full_ranking import full_metrics, full_ranks, rerank_ranks
from bdlm_lib.params import load_params


def toy():
    # 3 users, 6 items; valid and test held-out items; user 2's train item 5 was dropped (train_keep)
    train = pd.DataFrame({"user": [0, 0, 1, 2], "item": [0, 1, 2, 3]})
    return SimpleNamespace(n_items=6, n_users=3, train=train,
                           dropped=pd.DataFrame({"user": [2], "item": [5]}),
                           valid=pd.DataFrame({"user": [0, 1, 2], "item": [2, 3, 4]}),
                           test=pd.DataFrame({"user": [0, 1, 2], "item": [5, 4, 0]}))


def test_full_ranks_skip_touched_items_and_match_a_hand_count():
    ds = toy()
    scores = np.array([[9, 8, 7, 1, 2, 3],       # user 0: 0,1 train, 2 valid -> ranked {3,4,5}: 5 is first
                       [0, 5, 9, 1, 6, 2],       # user 1: 2 train, 3 valid -> {0,1,4,5}: 4 first
                       [1, 7, 8, 9, 9, 9]],      # user 2: 3 train, 4 valid, 5 dropped -> {0,1,2}: 0 last
                      dtype=float)
    ranks = full_ranks(lambda u: scores[u], ds, "test", np.array([0, 1, 2]))
    assert ranks.tolist() == [0, 0, 2]
    m = full_metrics(ranks.to_numpy(), ks=(1, 2))
    assert m["Recall@1"] == pytest.approx(2 / 3) and m["Recall@2"] == pytest.approx(2 / 3)
    assert m["NDCG@2"] == pytest.approx(2 / 3)
    # the valid split ranks user 1's valid item 3 among {0, 1, 3, 4, 5}: the test item 4 is in
    # its future, so it is ranked too; items 1, 4 and 5 score above item 3
    assert full_ranks(lambda u: scores[u], ds, "valid", np.array([1])).tolist() == [3]


def test_top_n_and_a_second_stage_rerank_match_a_hand_count():
    ds = toy()
    scores = np.array([[9, 8, 7, 1, 2, 3], [0, 5, 9, 1, 6, 2], [1, 7, 8, 9, 9, 9]], dtype=float)
    ranks, top = full_ranks(lambda u: scores[u], ds, "test", np.array([0, 1, 2]), top_n=2)
    assert ranks.tolist() == [0, 0, 2]
    assert top.tolist() == [[5, 4], [4, 1], [2, 1]]       # best first, touched items never listed
    held = ds.test["item"].to_numpy()
    # user 0: the second stage puts item 4 above the held-out 5 -> rank 1; user 1: a tie keeps the
    # first-stage order -> rank 0; user 2: its item is outside the top 2 and keeps rank 2
    second = np.array([[0.1, 0.9], [0.5, 0.5], [3.0, 1.0]])
    assert rerank_ranks(ranks.to_numpy(), top, held, second).tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="do not agree"):
        rerank_ranks(np.array([5, 0, 2]), top, held, second)


def test_ndcg_equals_scikit_learn_for_one_relevant_item():
    rng = np.random.default_rng(0)
    n_users, n_items, ranks, sk = 50, 40, [], []
    for _ in range(n_users):
        s = rng.permutation(n_items).astype(float)           # no ties
        pos = int(rng.integers(n_items))
        ranks.append(int((s > s[pos]).sum()))
        rel = np.zeros(n_items)
        rel[pos] = 1
        sk.append(ndcg_score(rel[None], s[None], k=10))
    assert full_metrics(np.array(ranks), ks=(10,))["NDCG@10"] == pytest.approx(np.mean(sk), abs=1e-12)


def test_constant_scorer_gets_chance_not_zero():
    ds = toy()
    ranks = full_ranks(lambda u: np.zeros((len(u), 6)), ds, "test", np.array([0, 1, 2]), seed=3)
    # ranked sets have 3, 4 and 3 items: ties broken by a seeded item order, not by the item id
    assert all(0 <= r < n for r, n in zip(ranks, (3, 4, 3)))


def test_domain_run_in_full_mode_writes_recall_and_ndcg(tmp_path):
    p = load_params("ml1m", "smoke", overrides={"output_dir": str(tmp_path), "domain.progress": False,
                                                "domain.model": "mf", "domain.epochs": 1, "eval.mode": "full"})
    ds = load_dataset(p, verbose=False)
    _, metrics, run_dir = run_domain(p, ds)
    full = metrics["full"]
    assert full["n_items"] == ds.n_items and full["n_users"] == metrics["topk"]["n_users"]
    assert 0 <= full["NDCG@10"] <= full["Recall@10"] <= full["Recall@20"] <= 1
    assert full["uniform_negatives"] == p["testset"]["n_candidates"] - 1
    assert 0 < full["HR@1 uniform"] < full["HR@2 uniform"] < 1
    # the report's full-ranking table reads it back from the stored run, with a Wilson interval
    from bdlm_lib.report import collect_runs
    from bdlm_lib.report.full_catalogue import full_ranking_table, wilson
    table = full_ranking_table(collect_runs(tmp_path))
    row = table.iloc[0]
    assert len(table) == 1 and row["method"] == "GMF" and row["users"] == full["n_users"]
    lo, hi = wilson(full["Recall@10"], full["n_users"])
    assert row["Recall@10"] == f"{full['Recall@10']:.3f} [{lo:.3f}, {hi:.3f}]" and row["NDCG@20"] == f"{full['NDCG@20']:.3f}"
    assert row["HR@1 vs uniform negatives"] == f"{full['HR@1 uniform']:.3f}"


def test_wilson_interval_matches_the_textbook_case():
    from bdlm_lib.report.full_catalogue import wilson
    lo, hi = wilson(0.5, 100)                 # 0.5 +- 1.96 * 0.5 / sqrt(100 + 1.96^2) around 0.5
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson(0.0, 20)                  # never below 0, upper end z^2 / (n + z^2)
    assert lo == 0.0 and hi == pytest.approx(1.96 ** 2 / (20 + 1.96 ** 2), abs=1e-3)


def test_hr1_against_each_kind_of_negative(tmp_path):
    # a hit against all 19 negatives is a hit against each half: HR@1 <= min(pop-only, sim-only),
    # and with untied scores the "all" figure is the run's own HR@1
    from bdlm_lib.report.negatives import run_negative_kinds
    p = load_params("ml1m", "smoke", overrides={"output_dir": str(tmp_path), "domain.progress": False,
                                                "domain.model": "mf", "domain.epochs": 2})
    _, metrics, run_dir = run_domain(p, load_dataset(p, verbose=False))
    k = run_negative_kinds(run_dir)            # its data found in its own output folder
    assert k["all"] == pytest.approx(metrics["topk"]["HR@1"])
    assert k["all"] <= min(k["pop"], k["sim"]) and max(k["pop"], k["sim"]) <= 1
    assert k["pop"] != k["sim"]


def test_per_user_record_keeps_what_ties_decide(tmp_path):
    # popularity scores tie often: the record's rank breaks a tie as metrics.evaluate does (the
    # candidate stored first wins) and its beaten_* counts a tie against the held-out item
    from bdlm_lib.report.collect import load_predictions
    from bdlm_lib.report.records import candidates_of, user_record, user_table
    p = load_params("ml1m", "smoke", overrides={"output_dir": str(tmp_path), "domain.progress": False,
                                                "domain.model": "pop"})
    _, metrics, run_dir = run_domain(p, load_dataset(p, verbose=False))
    preds = load_predictions(run_dir)
    thr = metrics["binary"]["threshold"]
    rec = user_record(preds, thr, candidates_of(run_dir))
    t = user_table(run_dir, threshold=thr, kinds=True)
    pd.testing.assert_frame_equal(t.drop(columns=["hit1", "hit2"]), rec)
    assert (rec["rank"] < 1).mean() == pytest.approx(metrics["topk"]["HR@1"])
    # coarser scores: more ties, with the held-out item too
    preds["score"] = np.where(preds["task"] == "topk", preds["score"] // 8, preds["score"])
    rec = user_record(preds, thr, candidates_of(run_dir))
    tk = preds[preds["task"] == "topk"]
    pos = tk[tk["label"] == 1].set_index("user")["score"]
    # by hand: higher-scored negatives, plus tied ones stored before the held-out item
    where = tk.assign(order=range(len(tk)))
    pos_order = where[where["label"] == 1].set_index("user")["order"]
    neg = where[where["label"] == 0]
    above = neg["score"].to_numpy() > pos.reindex(neg["user"]).to_numpy()
    tied_before = ((neg["score"].to_numpy() == pos.reindex(neg["user"]).to_numpy())
                   & (neg["order"].to_numpy() < pos_order.reindex(neg["user"]).to_numpy()))
    rank = pd.Series(above | tied_before).groupby(neg["user"].to_numpy()).sum()
    assert tied_before.sum() > 0 and (rec["rank"] == rank.reindex(rec.index)).all()
    at_least = pd.Series(above | (neg["score"].to_numpy() == pos.reindex(neg["user"]).to_numpy()))
    assert (rec["beaten_all"] == at_least.groupby(neg["user"].to_numpy()).sum().reindex(rec.index)).all()
    assert (rec["beaten_all"] > rec["rank"]).any()                           # a tie it won on order


def test_uniform_negatives_hr_matches_counting_every_draw():
    # rank r among P other items, n uniform negatives without replacement: count the draws by hand
    from itertools import combinations
    from math import comb
    from bdlm_lib.full_ranking import uniform_hr
    for pool, rank, n in ((6, 2, 3), (7, 0, 4), (5, 5, 2), (8, 3, 3)):
        draws = list(combinations(range(pool), n))          # items 0..rank-1 score above the held-out item
        above = [sum(i < rank for i in d) for d in draws]
        got = uniform_hr(np.array([rank]), np.array([pool]), n, ks=(1, 2))
        assert got["HR@1 uniform"] == pytest.approx(sum(a == 0 for a in above) / len(draws))
        assert got["HR@2 uniform"] == pytest.approx(sum(a < 2 for a in above) / len(draws))
    assert uniform_hr(np.array([2]), np.array([6]), 3)["HR@1 uniform"] == pytest.approx(comb(4, 3) / comb(6, 3))
    # over users it is the mean; at rank 0 always a hit, below every item never
    two = uniform_hr(np.array([0, 6]), np.array([6, 6]), 3)
    assert two["HR@1 uniform"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="fewer than 3"):
        uniform_hr(np.array([0]), np.array([2]), 3)


def test_ranked_pool_counts_the_untouched_items():
    from bdlm_lib.full_ranking import ranked_pool
    ds = toy()
    # user 0 touched 0, 1 (train), 2 (valid) -> test item 5 against {3, 4}; user 2 touched 3, 5 and 4 (valid)
    assert list(ranked_pool(ds, "test", np.array([0, 1, 2]))) == [2, 3, 2]
    assert list(ranked_pool(ds, "valid", np.array([0, 1, 2]))) == [3, 4, 3]


def test_a_finished_domain_run_is_evaluated_again_without_training(tmp_path, capsys):
    import json
    from bdlm_lib.cli import main as cli
    from bdlm_lib.report import collect_runs
    from bdlm_lib.report.full_catalogue import full_ranking_table
    p = load_params("ml1m", "smoke", overrides={"output_dir": str(tmp_path), "domain.progress": False,
                                                "domain.model": "lightgcn", "domain.epochs": 2})
    _, metrics, src = run_domain(p, load_dataset(p, verbose=False))
    assert "full" not in metrics
    assert cli(["evaluate", str(src), "--set", "eval.mode=full"]) == 0
    dst = src.parent.parent / "domain_eval" / src.name
    again = json.loads((dst / "metrics.json").read_text())
    # the same model on the same candidates: the same figures, and the full ranking beside them
    assert again["topk"] == metrics["topk"] and again["binary"] == metrics["binary"]
    assert again["epochs_run"] == metrics["epochs_run"] and again["evaluated_from"] == f"domain/{src.name}"
    assert again["full"]["n_users"] == metrics["topk"]["n_users"] and 0 < again["full"]["HR@1 uniform"] <= 1
    # found finished the second time: nothing is evaluated again
    stamp = (dst / "metrics.json").stat().st_mtime_ns
    assert cli(["evaluate", str(src), "--set", "eval.mode=full"]) == 0
    assert "already evaluated so" in capsys.readouterr().out and (dst / "metrics.json").stat().st_mtime_ns == stamp
    # other eval settings into the same folder stop and say which; a training setting is refused
    assert cli(["evaluate", str(src), "--set", "eval.mode=full", "--set", "eval.full_ks=[5]"]) == 2
    assert "eval.full_ks" in capsys.readouterr().err
    assert cli(["evaluate", str(src), "--set", "domain.lr=0.5"]) == 2
    assert "domain.lr: only eval.* settings" in capsys.readouterr().err
    assert cli(["evaluate", str(tmp_path / "nowhere"), "--set", "eval.mode=full"]) == 2
    # the report lists it in the full-catalogue table
    table = full_ranking_table(collect_runs(tmp_path))
    assert list(table["batch"]) == ["domain_eval"] and table["users"].iloc[0] == again["full"]["n_users"]
