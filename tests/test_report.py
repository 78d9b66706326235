"""Report assembly from stored run folders: real smoke-preset ML-1M test sets scored by simple
real scorers through metrics.evaluate, stored as the batch runner and notebooks store them."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bdlm_lib import load_params
from bdlm_lib.data import load_dataset
from bdlm_lib.report import build_report, collect_runs, paired_test, per_user
from bdlm_lib.metrics import evaluate
from bdlm_lib.runs import write_json


REPO = Path(__file__).resolve().parent.parent


def scorer(strength: float, seed: int):
    """Noise plus `strength` times the label: 0 = chance, large = near-perfect (no ties)."""
    def fn(frame: pd.DataFrame) -> np.ndarray:
        rng = np.random.default_rng(seed + len(frame))
        return strength * frame["label"].to_numpy() + rng.normal(size=len(frame))
    return fn


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    params = load_params("ml1m", "smoke", {"output_dir": str(out)})
    ds = load_dataset(params, verbose=False)

    def store(run_id, method, sides, lam=None, topk_users=None):
        run = out / "ml1m" / "t" / run_id
        metrics, preds = {}, []
        for side, strength in sides.items():
            m, p = evaluate(scorer(strength, zlib.crc32((run_id + side).encode()) % 1000), ds, max_users=40,
                            topk_users=topk_users, return_predictions=True)
            metrics[side] = m
            preds.append(p.assign(side=side))
        write_json(run / "run.json", {"method": method, "lambda_ml": lam, "seed": 42, "preset": "smoke",
                                      "status": "ok"})                 # as `bdlm batch` writes it
        # two-sided runs as joint/run.py writes them: drs copied to the top level too
        write_json(run / "metrics.json", metrics["main"] if "main" in metrics else {**metrics["drs"], **metrics})
        pd.concat(preds).to_parquet(run / "predictions.parquet")

    store("instructrec-s42", "instructrec", {"main": 0.3})
    store("lightgcn-s42", "lightgcn", {"main": 1.0}, topk_users=60)   # ranks more users than the rest
    store("ncf-s42", "ncf", {"main": 0.5})
    store("lightgcn_ft-s42", "lightgcn_ft", {"main": 1.1})   # controls (bdlm_lib/baselines/control.py)
    store("ncf_ft-s42", "ncf_ft", {"main": 0.6})
    store("wo_jl-s42", "wo_jl", {"llm": 1.2, "drs": 1.5})
    store("wo_pe-lam0.1-s42", "wo_pe", {"llm": 1.3, "drs": 1.6}, 0.1)
    store("wo_et-lam0.1-s42", "wo_et", {"llm": 0.9, "drs": 1.4}, 0.1)
    store("bdlm_ncf-lam0.1-s42", "bdlm_ncf", {"llm": 1.5, "drs": 2.0}, 0.1)
    for lam, s in ((0.0, 1.5), (0.01, 2.0), (0.1, 3.0), (1.0, 2.5)):
        store(f"bdlm-lam{lam:g}-s42", "bdlm", {"llm": s - 0.5, "drs": s}, lam)
    write_json(out / "ml1m" / "t" / "data_prep-s42" / "metrics.json", {"stats": ds.stats})  # not a method
    return out, ds


def test_report_files_tables_and_ci(outputs):
    out, ds = outputs
    md = build_report(out, n_boot=300)
    rep = out / "report"
    assert md == rep / "report.md"
    for f in ("report.md", "report.html", "table1.csv", "table3.csv", "table4.csv", "significance.csv",
              "fig5_ablations.png", "fig6_lambda.png"):
        assert (rep / f).stat().st_size > 0, f
    assert (rep / "fig5_ablations.png").read_bytes()[:4] == b"\x89PNG"
    t1 = pd.read_csv(rep / "table1.csv")
    assert t1.loc[0, "#users"] == ds.n_users and t1.loc[0, "dataset"] == "ml1m"

    summary = pd.read_csv(rep / "summary.csv")
    assert set(summary["label"]) >= {"InstructRec", "LightGCN", "NCF", "BDLM-llm", "BDLM-drs", "w/o JL-drs",
                                     "w/o PE-llm", "w/o ET-drs", "BDLM-NCF-llm", "BDLM-NCF-drs"}
    for m in ("HR@1", "HR@2", "F1"):  # every CI holds its point estimate
        assert (summary[f"{m} lo"] <= summary[m] + 1e-12).all() and (summary[m] <= summary[f"{m} hi"] + 1e-12).all()
        assert (summary[f"{m} hi"] - summary[f"{m} lo"] > 0).any()
    # Table 3's BDLM comes from the default λ (0.1), not the best one on test
    bd = summary.set_index("label").loc["BDLM-drs"]
    assert bd["runs"].endswith("bdlm-lam0.1-s42")
    stored = json.loads((out / "ml1m" / "t" / "bdlm-lam0.1-s42" / "metrics.json").read_text())
    assert bd["HR@1"] == pytest.approx(stored["drs"]["topk"]["HR@1"])

    # Improv. = (best BDLM - best baseline) / best baseline, per metric
    s = summary.set_index("label")
    for m in ("HR@1", "F1"):
        best_base = s.loc[["InstructRec", "LightGCN", "NCF"], m].max()
        best_ours = s.loc[["BDLM-llm", "BDLM-drs"], m].max()
        imp = json.loads((rep / "improvement.json").read_text())["improvement"][f"ml1m {m}"]
        assert imp == pytest.approx((best_ours - best_base) / best_base)
        t3 = pd.read_csv(rep / "table3.csv", index_col=0)
        assert t3.loc["Improv.", f"ml1m {m}"] == f"{100 * imp:+.1f}%"
    # rows may rank different numbers of users: Table 3 says how many (ranked / binary)
    assert t3.loc["LightGCN", "ml1m users"] == "60 / 40" and t3.loc["InstructRec", "ml1m users"] == "40 / 40"
    assert "Improv." in md.read_text() and "<table" in (rep / "report.html").read_text()

    sig = pd.read_csv(rep / "significance.csv")
    row = sig[sig["metric"] == "HR@1"].iloc[0]
    assert row["BDLM"] == s.loc[["BDLM-llm", "BDLM-drs"], "HR@1"].idxmax()
    assert row["best baseline"] == s.loc[["InstructRec", "NCF", "LightGCN"], "HR@1"].idxmax()
    assert row["delta lo"] <= row["delta"] <= row["delta hi"]
    assert row["p (McNemar exact)"] < 0.05 and row["wins"] > row["losses"] and row["comparison"] == "vs best baseline"
    # the controls: their own rows in Tables 3 / 4, never the "best baseline"; each BDLM-drs paired
    # with its domain model and with its control on the same users
    assert "LightGCN-FT" in t3.index and "NCF-FT" in pd.read_csv(rep / "table4.csv", index_col=0).index
    assert "FT" not in row["best baseline"]
    hr = sig[sig["metric"] == "HR@1"].set_index(["BDLM", "best baseline"])
    first = (row["BDLM"], row["best baseline"])   # a pair that is the best-baseline row is not repeated
    drs = [("BDLM-drs", "LightGCN"), ("BDLM-drs", "LightGCN-FT"), ("BDLM-NCF-drs", "NCF"), ("BDLM-NCF-drs", "NCF-FT")]
    assert list(hr.index) == [first] + [p for p in drs if p != first]
    assert list(hr["comparison"])[1:] == [("vs the control" if "FT" in b else "vs its domain model")
                                          for a, b in drs if (a, b) != first]
    for ours, base in (("BDLM-drs", "LightGCN-FT"), ("BDLM-NCF-drs", "NCF-FT"), ("BDLM-NCF-drs", "NCF")):
        r = hr.loc[(ours, base)]
        assert r["n_users"] == 40 and r["delta"] == pytest.approx(s.loc[ours, "HR@1"] - s.loc[base, "HR@1"])


def test_per_user_matches_metrics_and_paired_test(outputs):
    out, _ = outputs
    runs = collect_runs(out)
    r = runs[(runs["run_id"] == "lightgcn-s42")].iloc[0]
    p = pd.read_parquet(r["run_dir"] + "/predictions.parquet")
    u = per_user(p, r["threshold"])
    assert u["hit1"].mean() == pytest.approx(r["HR@1"]) and u["hit2"].mean() == pytest.approx(r["HR@2"])
    tp, fp, fn = u["tp"].sum(), u["fp"].sum(), u["fn"].sum()
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(r["F1"])
    same = paired_test(u, u, n_boot=100)
    assert same["HR@1"]["p_mcnemar"] == 1.0 and same["HR@1"]["delta"] == 0.0
    assert same["F1"]["ci"] == [0.0, 0.0]
    # this run ranks 60 users and scores 40 of them on the binary task: F1 is compared over those 40
    assert (u["n_binary"] > 0).sum() == 40 and len(u) == 60
    assert same["n_users"] == 60 and same["F1"]["n_users"] == 40


def test_report_drops_figures_it_no_longer_has_runs_for(outputs, tmp_path):
    out, _ = outputs
    rep = tmp_path / "rep"
    build_report(out, report_dir=rep, n_boot=50)
    assert (rep / "fig6_lambda.png").exists()
    build_report(out, report_dir=rep, n_boot=50, preset="demo")   # no demo runs: no λ curve
    assert not (rep / "fig6_lambda.png").exists() and not (rep / "fig5_ablations.png").exists()
    assert "fig6_lambda.png" not in (rep / "report.md").read_text()


def test_report_on_empty_outputs(tmp_path):
    with pytest.raises(ValueError, match="no finished runs to report"):
        build_report(tmp_path, n_boot=50)
    assert not (tmp_path / "report").exists()


def test_report_never_mixes_presets(outputs, tmp_path):
    """A larger preset's runs replace the smaller one's for the whole dataset (not per method), and
    `preset=` picks one explicitly: a method run only at smoke does not appear beside demo runs."""
    import shutil
    out, _ = outputs
    mixed = tmp_path / "outputs"
    shutil.copytree(out / "ml1m", mixed / "ml1m")
    demo = mixed / "ml1m" / "d"

    def as_demo(run_id):
        shutil.copytree(out / "ml1m" / "t" / run_id, demo / run_id)
        info = json.loads((demo / run_id / "run.json").read_text())
        write_json(demo / run_id / "run.json", {**info, "preset": "demo"})

    # a larger preset with domain runs only (e.g. the full-data baselines) does not replace the
    # main table's preset: they have their own table
    as_demo("lightgcn-s42")
    build_report(mixed, n_boot=50)
    summary = pd.read_csv(mixed / "report" / "summary.csv")
    assert set(summary["preset"]) == {"smoke"} and "BDLM-drs" in set(summary["label"])
    # with a BDLM run there, it does, for the whole dataset
    as_demo("bdlm-lam0.1-s42")
    build_report(mixed, n_boot=50)
    summary = pd.read_csv(mixed / "report" / "summary.csv")
    assert set(summary["label"]) == {"LightGCN", "BDLM-llm", "BDLM-drs"} and set(summary["preset"]) == {"demo"}
    assert "per dataset its largest preset" in (mixed / "report" / "report.md").read_text()

    build_report(mixed, n_boot=50, preset="smoke")
    summary = pd.read_csv(mixed / "report" / "summary.csv")
    assert set(summary["preset"]) == {"smoke"} and "BDLM-drs" in set(summary["label"])
    assert summary.set_index("label").loc["LightGCN", "runs"].endswith("t/lightgcn-s42")


def test_standalone_joint_runs_are_labelled_by_their_params(outputs, tmp_path):
    """bdlm/<variant>/ written by run_bdlm outside a batch (run.json holds only a fingerprint): the
    report reads which ablation it is from its params.yaml, not "BDLM" for all."""
    import shutil

    from bdlm_lib.params import save_params
    out, _ = outputs
    root = tmp_path / "outputs" / "ml1m" / "bdlm"
    for variant, over in (("lightgcn-woPE-lam0.1", {"llm.preload": False}),
                          ("lightgcn-lam0.1", {})):
        run = root / variant
        shutil.copytree(out / "ml1m" / "t" / "wo_pe-lam0.1-s42", run)
        write_json(run / "run.json", {"fingerprint": "0" * 16})
        save_params(load_params("ml1m", "smoke", over), run / "params.yaml")
    runs = collect_runs(tmp_path / "outputs")
    labels = dict(zip(runs["run_id"] + "/" + runs["side"], runs["label"]))
    assert labels == {"lightgcn-woPE-lam0.1/llm": "w/o PE-llm", "lightgcn-woPE-lam0.1/drs": "w/o PE-drs",
                      "lightgcn-lam0.1/llm": "BDLM-llm", "lightgcn-lam0.1/drs": "BDLM-drs"}


def test_table1_lists_the_data_samples_the_reported_runs_used(outputs, tmp_path):
    import shutil

    from bdlm_lib.data.dataset import dataset_tag
    from bdlm_lib.params import save_params
    src, ds = outputs
    out = tmp_path / "o"
    shutil.copytree(src / "ml1m", out / "ml1m", ignore=shutil.ignore_patterns("report"))
    data = out / "ml1m" / "data"
    (tag,) = [d.name for d in data.iterdir()]
    shutil.copytree(data / tag, data / "k5-u99-s7")          # another prepared sample, no run uses it
    build_report(out, n_boot=50)
    assert sorted(pd.read_csv(out / "report" / "table1.csv")["data"]) == sorted([tag, "k5-u99-s7"])  # runs say nothing
    params = load_params("ml1m", "smoke", {"output_dir": str(out)})
    assert dataset_tag(params) == tag
    for run in (out / "ml1m" / "t").iterdir():
        save_params(params, run / "params.yaml")
    build_report(out, n_boot=50)
    t1 = pd.read_csv(out / "report" / "table1.csv")
    assert list(t1["data"]) == [tag] and t1.loc[0, "#users"] == ds.n_users


def test_paired_tests_pool_the_seeds_both_rows_have(outputs, tmp_path):
    """Seed 43 draws its own users and candidates: the report averages each row over its seeds and
    pools the paired test over the seeds both rows have (wins and losses summed, Δ averaged)."""
    import shutil

    from scipy.stats import binomtest
    src, _ = outputs
    out = tmp_path / "o"
    t = out / "ml1m" / "t"
    for run in ("lightgcn-s42", "lightgcn_ft-s42", "bdlm-lam0.1-s42"):
        shutil.copytree(src / "ml1m" / "t" / run, t / run)
    ds43 = load_dataset(load_params("ml1m", "smoke", {"output_dir": str(out), "seed": 43}), verbose=False)
    for run_id, method, sides, lam in (("lightgcn-s43", "lightgcn", {"main": 1.0}, None),
                                       ("bdlm-lam0.1-s43", "bdlm", {"llm": 2.0, "drs": 2.5}, 0.1)):
        metrics, preds = {}, []
        for side, strength in sides.items():
            m, p = evaluate(scorer(strength, 7 + len(side)), ds43, max_users=40, return_predictions=True)
            metrics[side], preds = m, preds + [p.assign(side=side)]
        write_json(t / run_id / "run.json", {"method": method, "lambda_ml": lam, "seed": 43, "preset": "smoke"})
        write_json(t / run_id / "metrics.json", metrics["main"] if "main" in metrics else {**metrics["drs"], **metrics})
        pd.concat(preds).to_parquet(t / run_id / "predictions.parquet")

    build_report(out, n_boot=200)
    runs = collect_runs(out).set_index(["run_id", "side"])
    table = lambda run_id, side: per_user(pd.read_parquet(t / run_id / "predictions.parquet").query("side == @side"),
                                          runs.loc[(run_id, side), "threshold"])   # noqa: E731
    per_seed = [paired_test(table(f"bdlm-lam0.1-s{s}", "drs"), table(f"lightgcn-s{s}", "main"), n_boot=50)
                for s in (42, 43)]
    sig = pd.read_csv(out / "report" / "significance.csv")
    hr = sig[sig["metric"] == "HR@1"].set_index(["BDLM", "best baseline"])
    pooled = hr.loc[("BDLM-drs", "LightGCN")]
    wins, losses = (sum(p["HR@1"][k] for p in per_seed) for k in ("wins", "losses"))
    assert pooled["n_seeds"] == 2 and pooled["n_users"] == 80 and (pooled["wins"], pooled["losses"]) == (wins, losses)
    assert pooled["p (McNemar exact)"] == pytest.approx(binomtest(wins, wins + losses, 0.5).pvalue)
    assert pooled["delta"] == pytest.approx(np.mean([p["HR@1"]["delta"] for p in per_seed]))
    assert pooled["delta lo"] <= pooled["delta"] <= pooled["delta hi"]
    # the seeds are different draws: seed 43's users and candidates are not seed 42's
    assert per_seed[1]["HR@1"] != per_seed[0]["HR@1"]
    s = pd.read_csv(out / "report" / "summary.csv").set_index("label")
    assert s.loc["BDLM-drs", "n_seeds"] == 2 and s.loc["LightGCN-FT", "n_seeds"] == 1
    # the control exists at seed 42 only: its test is that seed's alone
    ctrl = hr.loc[("BDLM-drs", "LightGCN-FT")]
    assert ctrl["n_seeds"] == 1 and ctrl["n_users"] == 40
    alone = paired_test({42: table("bdlm-lam0.1-s42", "drs")}, {42: table("lightgcn_ft-s42", "main"), 43: None})
    assert (ctrl["wins"], ctrl["losses"]) == (alone["HR@1"]["wins"], alone["HR@1"]["losses"])
    with pytest.raises(ValueError, match="no seed in common"):
        paired_test({42: table("lightgcn-s42", "main")}, {43: table("lightgcn-s43", "main")})


def test_results_page_is_generated_with_figures_and_notes(outputs, tmp_path):
    out, _ = outputs
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results_notes.md").write_text("## Notes\n\n- 2026-01-01: a dated note.\n")
    build_report(out, report_dir=tmp_path / "rep", n_boot=50, docs=docs / "results.md")
    page = (docs / "results.md").read_text()
    assert page.startswith("# Results\n") and "do not edit by hand" in page
    assert "## Table 3" in page and "## Wall time of the runs used" in page
    assert page.rstrip().endswith("a dated note.")
    figs = sorted(p.name for p in (docs / "results_figures").glob("*.png"))
    assert figs and all(f"](results_figures/{f})" in page for f in figs)
    assert str(out) not in page                     # the page names no local folder


def test_full_data_table_and_sparsity_section(outputs, tmp_path):
    """Full-data domain runs get the table beside the paper's Table 3; runs of a sparsity* batch at
    two densities get the sparsity tables, paired tests and per-bucket rows (buckets partition users)."""
    import shutil
    import yaml
    out, ds = outputs
    root = tmp_path / "outputs"

    def copy(run_id, batch, **data):
        dst = root / "ml1m" / batch / run_id
        shutil.copytree(out / "ml1m" / "t" / run_id, dst)
        p = load_params("ml1m", "smoke", {"output_dir": str(root), **{f"data.{k}": v for k, v in data.items()}})
        if batch == "full":
            p = load_params("ml1m", "paper", {"output_dir": str(root)})
        (dst / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(p, default=dict))))
        return dst

    copy("lightgcn-s42", "full")
    for data, batch in (({"cold_items": 0.2}, "sparsity_cold"), ({"train_keep": 1.0}, "sparsity_full"),
                        ({"train_keep": 0.5}, "sparsity_half")):
        for run_id in ("lightgcn-s42", "lightgcn_ft-s42", "bdlm-lam0.1-s42", "instructrec-s42"):
            copy(run_id, batch, **data)
    build_report(root, n_boot=50)
    rep = root / "report"
    paper = pd.read_csv(rep / "paper_comparison.csv").set_index("method")
    assert paper.loc["LightGCN", "paper HR@1"] == 0.284 and paper.loc["LightGCN", "dataset"] == "ml1m"
    sp = pd.read_csv(rep / "sparsity.csv")
    # reading order: the default, thinner and thinner, then cold items (not the folders' order)
    assert list(sp["setting"]) == ["default", "keep 0.5", "cold 0.2"]
    assert {"LightGCN", "BDLM-drs", "InstructRec"} <= set(sp.columns)
    tests = pd.read_csv(rep / "sparsity_tests.csv")
    assert set(tests["comparison"]) == {"BDLM-drs vs LightGCN", "BDLM-llm vs LightGCN",
                                        "BDLM-drs vs LightGCN-FT"} and len(tests) == 9     # and the control
    assert list(dict.fromkeys(tests["setting"])) == ["default", "keep 0.5", "cold 0.2"]
    # the change of the gap from the default setting = the difference of the two settings' Δ
    change = pd.read_csv(rep / "sparsity_gap_change.csv").set_index("comparison")
    delta = tests.set_index(["comparison", "setting"])["ΔHR@1"]
    assert list(change["setting"]) == ["keep 0.5"] * 3 + ["cold 0.2"] * 3
    for comp, row in change.iterrows():
        assert row["gap here"] == pytest.approx(delta[(comp, row["setting"])], abs=1e-4)
        assert row["gap at default"] == pytest.approx(delta[(comp, "default")], abs=1e-4)
        assert row["change lo"] <= row["change"] <= row["change hi"] and row["n_users"] == 40
    buckets = pd.read_csv(rep / "sparsity_item_popularity.csv")
    for setting, g in buckets.groupby("setting"):
        assert g["n LightGCN"].sum() == 60 and g["n BDLM-drs"].sum() == 40     # ranked users, all buckets
    md = (rep / "report.md").read_text()
    assert "## Sparsity" in md and "## Full data" in md and (rep / "sparsity.png").exists()
    # notebook 10 draws and records the same study from the same runs
    import papermill as pm
    record = tmp_path / "nb10"
    pm.execute_notebook(str(REPO / "notebooks" / "10_sparsity.ipynb"), str(tmp_path / "10.ipynb"),
                        parameters={"output_dir": str(root), "run_dir": str(record), "n_boot": 50},
                        kernel_name="python3", cwd=str(REPO / "notebooks"), progress_bar=False)
    rec = json.loads((record / "metrics.json").read_text())
    assert rec["settings"] == ["default", "keep 0.5", "cold 0.2"] and len(rec["tests"]) == 9
    assert {t["p (McNemar exact)"] for t in rec["tests"]} == set(tests["p (McNemar exact)"])


def test_archive_keeps_what_the_report_reads_and_the_report_reads_it_back(outputs, tmp_path):
    """`bdlm archive` copies finished runs' records (not checkpoints, not failed runs) and the data
    records they used; the report from the archive alone equals the report from the outputs, a run
    in both folders counts once, and the newest run of a seed is the one `finished_utc` says."""
    import os
    import shutil
    import yaml
    from bdlm_lib.archive import archive_runs
    from bdlm_lib.cli import main as cli
    out, ds = outputs
    root = tmp_path / "outputs"
    shutil.copytree(out / "ml1m" / "data", root / "ml1m" / "data")
    for run_id in ("lightgcn-s42", "instructrec-s42", "bdlm-lam0.1-s42", "wo_jl-s42"):
        dst = root / "ml1m" / "full" / run_id
        shutil.copytree(out / "ml1m" / "t" / run_id, dst)
        p = load_params("ml1m", "smoke", {"output_dir": str(root)})
        (dst / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(p, default=dict))))
        (dst / "fingerprint.json").write_text(json.dumps({"run": run_id}))
    (root / "ml1m" / "full" / "lightgcn-s42" / "model.safetensors").write_bytes(b"weights")
    failed = root / "ml1m" / "full" / "wo_jl-s42"
    write_json(failed / "run.json", {**json.loads((failed / "run.json").read_text()), "status": "failed"})
    report_run = root / "ml1m" / "full" / "report"              # the batch's own report notebook
    report_run.mkdir()
    write_json(report_run / "run.json", {"method": "report", "scope": "batch", "status": "ok"})
    write_json(report_run / "metrics.json", {"report": str(root / "report" / "report.md")})
    by_hand = root / "ml1m" / "llm" / "et_pe"                   # a notebook run alone: no run.json
    shutil.copytree(out / "ml1m" / "t" / "instructrec-s42", by_hand)
    (by_hand / "run.json").unlink()
    results = tmp_path / "results"
    assert cli(["archive", "--output-dir", str(root), "--to", str(results)]) == 0
    runs = sorted(p.name for p in (results / "ml1m" / "full").iterdir())
    assert runs == ["bdlm-lam0.1-s42", "instructrec-s42", "lightgcn-s42"]          # not the failed run
    assert not (results / "ml1m" / "llm").exists()                              # nor the notebook's own
    kept = sorted(p.name for p in (results / "ml1m" / "full" / "lightgcn-s42").iterdir())
    assert kept == ["fingerprint.json", "metrics.json", "params.yaml", "per_user.parquet", "run.json"]
    assert {"per_user_llm.parquet", "per_user_drs.parquet"} <= {p.name for p in (results / "ml1m" / "full" / "bdlm-lam0.1-s42").iterdir()}
    tag = next((root / "ml1m" / "data").iterdir()).name
    assert sorted(p.name for p in (results / "ml1m" / "data" / tag).iterdir()) == ["manifest.json"]
    # the record holds what the negatives' table reads: the same figures as predictions + candidates
    from bdlm_lib.report.negatives import run_negative_kinds
    kinds = run_negative_kinds(root / "ml1m" / "full" / "lightgcn-s42")
    assert kinds is not None and run_negative_kinds(results / "ml1m" / "full" / "lightgcn-s42") == kinds
    assert archive_runs(root, results) == []                                        # nothing new
    # the report from the archive alone = from the outputs; both together count each run once
    build_report(root, report_dir=tmp_path / "a", n_boot=50)
    build_report(results, report_dir=tmp_path / "b", n_boot=50)
    build_report([root, results], report_dir=tmp_path / "c", n_boot=50)
    ci = [pd.read_csv(tmp_path / x / "summary.csv").drop(columns="runs") for x in ("a", "b")]
    ci[0] = ci[0][ci[0]["label"].isin(ci[1]["label"])].reset_index(drop=True)    # not the failed run's rows
    assert ci[1]["HR@1 hi"].notna().all() and ci[0].equals(ci[1])              # CIs from records = from predictions
    for name in ("table1.csv", "table3.csv", "significance.csv"):
        a = (tmp_path / "a" / name).read_text()
        assert a == (tmp_path / "b" / name).read_text() and a == (tmp_path / "c" / name).read_text(), name
    assert len(collect_runs(results)) == 4                      # 3 runs, BDLM has two sides
    assert len(collect_runs([root, results])) == len(collect_runs(root)) == 6  # + the failed run's sides
    # a changed run replaces its archived record, and its time (not the files' times) makes it the newest
    (root / "ml1m" / "full" / "lightgcn-s42" / "fingerprint.json").write_text(json.dumps({"run": "changed"}))
    assert archive_runs(root, results) == ["ml1m/full/lightgcn-s42 (replaced: its parameters or metrics changed)"]
    older = results / "ml1m" / "full" / "instructrec-s42"
    info = json.loads((older / "run.json").read_text())
    write_json(older / "run.json", {**info, "finished_utc": "2000-01-01T00:00:00+00:00"})
    os.utime(older / "metrics.json", (4e9, 4e9))            # a checkout's file time says nothing
    got = collect_runs(results).set_index("label")["finished"]
    assert got["InstructRec"] == "2000-01-01T00:00:00+00:00" < got["LightGCN"]
    # bad input: one line naming the folder, exit 2
    assert cli(["archive", "--output-dir", str(tmp_path / "nowhere"), "--to", str(results)]) == 2


def test_gap_change_rows_do_not_depend_on_other_settings():
    """Each row of the gap-change table bootstraps from a stream of its own: adding a setting leaves
    the other rows' intervals as they were."""
    from bdlm_lib.report.sparsity import PAIRS, gap_change
    rng = np.random.default_rng(0)
    users = pd.Index(np.arange(200), name="user")
    labels = {m for pair in PAIRS for m in pair}
    tables = {("ml1m", setting, m): {42: pd.DataFrame({"hit1": (rng.random(200) < 0.2).astype(float)}, index=users)}
              for setting in ("default", "keep 0.5", "cold 0.2") for m in labels}
    both = gap_change(tables, n_boot=200, alpha=0.05)
    alone = gap_change({k: v for k, v in tables.items() if k[1] != "keep 0.5"}, n_boot=200, alpha=0.05)
    assert list(both["setting"]) == ["keep 0.5"] * len(PAIRS) + ["cold 0.2"] * len(PAIRS)
    assert (both["change hi"] > both["change lo"]).all()
    pd.testing.assert_frame_equal(alone, both[both["setting"] == "cold 0.2"].reset_index(drop=True))
