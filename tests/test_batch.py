"""Batch runner: grid expansion, fail-fast validation, resume and failure isolation, with a tiny
real notebook executed by real papermill (a kernel per run: a few seconds each)."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import yaml

from bdlm_lib.experiments.batch import INJECTED, METHODS, BatchError, expand_batch, load_batch, run_batch
from bdlm_lib.runs import read_json

REPO = Path(__file__).resolve().parent.parent

PARAMS_CELL = """dataset = "ml1m"
preset = "smoke"
data_dir = None
output_dir = "outputs"
seed = 42
run_dir = None
method = "x"
overrides = {}"""

# HR@1 depends on the seed and λ so the summary shows distinct numbers; "boom" fails on purpose
WORK_CELL = """from pathlib import Path
from bdlm_lib.runs import write_json
if method == "boom":
    raise RuntimeError("planned failure")
lam = overrides.get("joint.lambda_ml", 0.0)
write_json(Path(run_dir) / "metrics.json",
           {"topk": {"HR@1": round(0.1 + lam / 10 + seed / 1000, 4), "HR@2": 0.5},
            "binary": {"f1": 0.6}, "seen": {"dataset": dataset, "preset": preset, "method": method,
                                            "overrides": overrides, "output_dir": output_dir}})"""


def write_notebook(path: Path, params_cell: str = PARAMS_CELL) -> Path:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params_cell)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# tiny"), p, nbformat.v4.new_code_cell(WORK_CELL)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def write_batch(tmp: Path, **spec) -> Path:
    base = {"name": "t", "preset": "smoke", "notebooks_dir": ".",
            "notebooks": [{"notebook": "tiny.ipynb"}],
            "grid": {"datasets": ["ml1m"], "methods": ["lightgcn"], "seeds": [1]}}
    base.update(spec)
    path = tmp / "batch.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


def test_expansion_grid_ids_and_params(tmp_path):
    write_notebook(tmp_path / "tiny.ipynb")
    b = write_batch(tmp_path, overrides={"domain.epochs": 1},
                    notebooks=[{"notebook": "tiny.ipynb", "per": "dataset", "id": "prep"},
                               {"notebook": "tiny.ipynb"},
                               {"notebook": "tiny.ipynb", "per": "batch", "id": "report"}],
                    grid=[{"datasets": ["ml1m", "amazon-health"], "methods": ["lightgcn", "bdlm", "wo_pe"],
                           "lambda_ml": [0, 0.01, 1], "seeds": [1, 2]},
                          {"datasets": ["ml1m"], "methods": ["bdlm"], "lambda_ml": [1], "seeds": [1]}])
    batch = expand_batch(b, output_dir=tmp_path / "out")
    ids = [(r.dataset, r.run_id) for r in batch.runs]
    # per dataset x seed: prep (2x2) + lightgcn (no λ axis: 2x2) + bdlm, wo_pe (3 λ each: 2x2x3x2)
    # + report once; the second block's run is a duplicate of the first's
    assert len(ids) == 4 + 4 + 24 + 1 == len(set(ids))
    assert ids[0] == ("ml1m", "prep-s1") and ids[-1] == ("ml1m", "report")
    assert ("ml1m", "lightgcn-s2") in ids and ("amazon-health", "bdlm-lam0.01-s1") in ids
    assert ("ml1m", "wo_pe-lam0-s2") in ids
    r = next(r for r in batch.runs if r.run_id == "wo_pe-lam0.01-s2" and r.dataset == "ml1m")
    assert r.params["llm"]["preload"] is False and r.params["joint"]["lambda_ml"] == 0.01
    assert r.params["domain"]["epochs"] == 1 and r.params["seed"] == 2
    assert r.params["data"]["sample_users"] == 150  # the smoke preset
    assert r.run_dir == (tmp_path / "out" / "ml1m" / "t" / "wo_pe-lam0.01-s2").resolve()
    assert not (tmp_path / "out").exists()  # expansion executes nothing


def test_bad_key_fails_before_anything_runs(tmp_path):
    write_notebook(tmp_path / "tiny.ipynb")
    b = write_batch(tmp_path, overrides={"domain.epocs": 3})
    with pytest.raises(BatchError, match=r"domain\.epocs"):
        run_batch(b, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    b = write_batch(tmp_path, grid={"datasets": ["ml1m"], "methods": ["lightgnc"]})
    with pytest.raises(BatchError, match="unknown method 'lightgnc'"):
        run_batch(b, output_dir=tmp_path / "out")


def test_method_bundles_extend_or_replace(tmp_path):
    write_notebook(tmp_path / "tiny.ipynb")
    b = write_batch(tmp_path, methods={"instructrec": {"extends": "instructrec", "eval.topk_users": 30},
                                       "ir_ema": {"extends": "instructrec", "sft": {"lr": 3e-4}},
                                       "lightgcn": {"domain.epochs": 2}},
                    grid={"datasets": ["ml1m"], "methods": ["instructrec", "ir_ema", "lightgcn"], "seeds": [1]})
    runs = {r.run_id: r for r in expand_batch(b, output_dir=tmp_path / "out").runs}
    ir = runs["instructrec-s1"].overrides
    # extends: the built-in bundle plus the entry's keys
    assert METHODS["instructrec"].items() <= ir.items() and ir["eval.topk_users"] == 30
    assert runs["instructrec-s1"].params["llm"]["extend_tokens"] is False
    # a new name extends the bundle as defined so far (here the redefined instructrec), nested keys flattened
    ema = runs["ir_ema-s1"].overrides
    assert ema == {**ir, "sft.lr": 3e-4}
    # without extends an entry replaces the built-in bundle
    assert runs["lightgcn-s1"].overrides == {"domain.epochs": 2}
    b = write_batch(tmp_path, methods={"x": {"extends": "instructrecc"}},
                    grid={"datasets": ["ml1m"], "methods": ["x"], "seeds": [1]})
    with pytest.raises(BatchError, match=r"methods\.x\.extends: unknown method 'instructrecc'"):
        expand_batch(b, output_dir=tmp_path / "out")
    b = write_batch(tmp_path, methods={"x": "instructrec"})
    with pytest.raises(BatchError, match=r"methods\.x: expected a mapping"):
        expand_batch(b, output_dir=tmp_path / "out")


def test_batch_file_extends_another(tmp_path):
    write_notebook(tmp_path / "tiny.ipynb")
    parent = write_batch(tmp_path, overrides={"eval": {"topk_users": 40}, "domain.epochs": 2},
                         methods={"instructrec": {"extends": "instructrec", "eval.topk_users": 20}})
    parent.rename(tmp_path / "parent.yaml")
    child = tmp_path / "sub" / "child.yaml"
    child.parent.mkdir()
    child.write_text(yaml.safe_dump({"extends": "../parent.yaml", "name": "wide",
                                     "overrides": {"eval.topk_users": 80},
                                     "grid": {"datasets": ["ml1m"], "methods": ["lightgcn", "instructrec"]}}))
    runs = {r.run_id: r for r in expand_batch(child, output_dir=tmp_path / "out",
                                              notebooks_dir=tmp_path).runs}
    assert set(runs) == {"lightgcn-s42", "instructrec-s42"}          # grid replaced
    lg, ir = runs["lightgcn-s42"], runs["instructrec-s42"]
    assert lg.run_dir.parent.name == "wide"                            # name replaced
    assert lg.params["eval"]["topk_users"] == 80 and lg.params["domain"]["epochs"] == 2  # overrides merged
    assert ir.params["eval"]["topk_users"] == 20                       # the parent's method entry kept
    # the parent's notebooks_dir "." is the parent's folder, not the child's (sub/ has no notebook)
    own = expand_batch(child, output_dir=tmp_path / "out").runs
    assert {nb for r in own for nb in r.notebooks} == {(tmp_path / "tiny.ipynb").resolve()}
    # a cycle and a missing parent fail naming the file
    (tmp_path / "parent.yaml").write_text((tmp_path / "parent.yaml").read_text() + "extends: sub/child.yaml\n")
    with pytest.raises(BatchError, match="cycle"):
        expand_batch(child, output_dir=tmp_path / "out", notebooks_dir=tmp_path)
    child.write_text("extends: nope.yaml\n")
    with pytest.raises(BatchError, match=r"child\.yaml: extends: nope\.yaml: no such batch file"):
        expand_batch(child, output_dir=tmp_path / "out", notebooks_dir=tmp_path)


def test_missing_notebook_or_parameters_fail_at_validation(tmp_path):
    b = write_batch(tmp_path, notebooks=[{"notebook": "04_joint_training.ipynb"}])
    with pytest.raises(BatchError, match="04_joint_training.ipynb does not exist"):
        expand_batch(b, output_dir=tmp_path / "out")
    write_notebook(tmp_path / "tiny.ipynb", params_cell="dataset = 'ml1m'")
    b = write_batch(tmp_path)
    with pytest.raises(BatchError, match="must declare.*'run_dir'"):
        expand_batch(b, output_dir=tmp_path / "out")


def test_runs_then_resume_runs_nothing(tmp_path, capsys):
    write_notebook(tmp_path / "tiny.ipynb")
    b = write_batch(tmp_path, grid={"datasets": ["ml1m"], "methods": ["lightgcn", "bdlm"],
                                    "lambda_ml": [0.5], "seeds": [7]})
    out = tmp_path / "out"
    s1 = run_batch(b, output_dir=out)
    assert [r["status"] for r in s1["runs"]] == ["ok", "ok"]
    run = out / "ml1m" / "t" / "bdlm-lam0.5-s7"
    m = read_json(run / "metrics.json")
    assert m["topk"]["HR@1"] == pytest.approx(0.1 + 0.05 + 0.007)
    assert m["seen"]["method"] == "bdlm" and m["seen"]["overrides"]["joint.lambda_ml"] == 0.5
    assert m["seen"]["overrides"]["joint.joint"] is True and m["seen"]["preset"] == "smoke"
    for f in ("params.yaml", "environment.json", "run.json", "tiny.ipynb"):
        assert (run / f).exists(), f
    assert yaml.safe_load((run / "params.yaml").read_text())["joint"]["lambda_ml"] == 0.5
    assert "bdlm-lam0.5-s7" in capsys.readouterr().out  # the summary table
    stamp = (run / "metrics.json").stat().st_mtime_ns
    s2 = run_batch(b, output_dir=out)
    assert [r["status"] for r in s2["runs"]] == ["done", "done"]
    assert (run / "metrics.json").stat().st_mtime_ns == stamp
    assert "0 to run" in capsys.readouterr().out


def test_failed_run_is_recorded_and_others_complete(tmp_path):
    write_notebook(tmp_path / "tiny.ipynb")
    b = write_batch(tmp_path, methods={"boom": {"domain.epochs": 1}},
                    grid={"datasets": ["ml1m"], "methods": ["gmf", "boom", "ncf"], "seeds": [3]})
    out = tmp_path / "out"
    summary = run_batch(b, output_dir=out)
    status = {r["run_id"]: r["status"] for r in summary["runs"]}
    assert status == {"gmf-s3": "ok", "boom-s3": "failed", "ncf-s3": "ok"}
    err = (out / "ml1m" / "t" / "boom-s3" / "error.txt").read_text().strip()
    assert err == "RuntimeError: planned failure"
    assert not (out / "ml1m" / "t" / "boom-s3" / "metrics.json").exists()
    saved = json.loads((out / "ml1m" / "t" / "summary.json").read_text())
    assert {r["run_id"]: r["status"] for r in saved["runs"]} == status
    assert next(r for r in saved["runs"] if r["run_id"] == "ncf-s3")["HR@1"] == pytest.approx(0.103)
    # a second invocation retries only the failed run
    again = run_batch(b, output_dir=out, only=None)
    assert {r["run_id"]: r["status"] for r in again["runs"]} == {"gmf-s3": "done", "boom-s3": "failed",
                                                                 "ncf-s3": "done"}


def split_off(params, *path):
    """(a plain copy of params without the key at `path`, that key's value)."""
    plain = json.loads(json.dumps(params))
    parent = plain
    for k in path[:-1]:
        parent = parent[k]
    return plain, parent.pop(path[-1])


def expand_repo_batch(name: str, tmp_path: Path):
    """(spec, Batch) of a shipped batch file, expanded over stub notebooks (the real ones may not
    exist yet)."""
    path = REPO / "params" / "batches" / name
    spec = load_batch(path)
    nb_dir = tmp_path / Path(name).stem
    for step in spec["notebooks"]:
        write_notebook(nb_dir / Path(step["notebook"]).name)
    return spec, expand_batch(path, output_dir=tmp_path / "out", notebooks_dir=nb_dir)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "params" / "batches").glob("*.yaml")))
def test_repo_batch_files_expand(name, tmp_path):
    """The shipped batch files validate."""
    spec, batch = expand_repo_batch(name, tmp_path)
    methods = {r.method for r in batch.runs}
    # the main batches compare BDLM with LightGCN and InstructRec (paper: also every ablation); the
    # cpu_more / aux batches add the other rows at the same preset
    if name.startswith("cpu_more_"):
        assert {"lightgcn", "wo_jl", "gpt4sm"} <= methods
    elif name.startswith("cpu_wide_"):  # more ranked users for the domain-side comparison
        assert {r.method for r in batch.runs if r.scope == "run"} == {"lightgcn", "lightgcn_ft", "bdlm"}
        main = {r.method: r.params for r in expand_repo_batch(name.replace("cpu_wide_", "cpu_"), tmp_path)[1].runs
                if r.scope == "run"}
        for r in (r for r in batch.runs if r.scope == "run"):   # the main batch's runs but for eval.topk_users
            (wide, more), (base, fewer) = (split_off(x, "eval", "topk_users") for x in (r.params, main[r.method]))
            assert more > fewer
            assert wide == base, r.run_id
    elif name.startswith("full_domain_"):  # the domain baselines on every user of the full data
        assert methods >= {"pop", "gmf", "ncf", "lightgcn", "sasrec", "gru4rec", "bert4rec"}
        runs = [r for r in batch.runs if r.scope == "run"]
        assert {r.params["preset"] for r in runs} == {"paper"}
        assert all(r.params["eval"]["max_users"] is None and r.params["data"]["sample_users"] is None for r in runs)
        # LightGCN at the LLM's hidden size (the row compared with the paper), the rest at d = 64
        assert {r.method: r.params["domain"]["dim"] for r in runs if r.method in ("lightgcn", "sasrec")} == \
            {"lightgcn": 576, "sasrec": 64}
    elif name.startswith("cpu_sparsity_"):  # one setting of the sparsity study; the same runs at every setting
        assert {r.method for r in batch.runs if r.scope == "run"} == {"lightgcn", "lightgcn_ft", "bdlm", "instructrec"}
        assert spec["name"].startswith("sparsity")            # the report's sparsity section reads these
        dense_name = "cpu_sparsity_" + name[len("cpu_sparsity_"):].split("_")[0].removesuffix(".yaml") + ".yaml"
        dense = {r.method: r.params for r in expand_repo_batch(dense_name, tmp_path)[1].runs if r.scope == "run"}
        for r in (r for r in batch.runs if r.scope == "run"):   # the dense point's runs but for the data knobs
            (a, keep), (b, keep1) = (split_off(x, "data", "train_keep") for x in (r.params, dense[r.method]))
            (a, cold), (b, cold0) = split_off(a, "data", "cold_items"), split_off(b, "data", "cold_items")
            (a, order), (b, recent) = split_off(a, "data", "train_keep_order"), split_off(b, "data", "train_keep_order")
            assert a == b, r.run_id
            assert recent == "recent" and (order == "recent" or keep < 1.0)
            assert keep1 == 1.0 and cold0 == 0.0 and (name == dense_name or (keep, cold) != (1.0, 0.0))
    elif name.startswith("cpu_full_ranking_"):  # full-catalogue ranking: the main batch's data and users
        runs = [r for r in batch.runs if r.scope == "run"]
        assert {r.method for r in runs} == {"pop", "lightgcn", "bdlm"}
        assert {r.params["eval"]["mode"] for r in runs} == {"full"}
        main = {r.method: r.params for r in expand_repo_batch(name.replace("cpu_full_ranking_", "cpu_sparsity_"),
                                                              tmp_path)[1].runs if r.scope == "run"}
        for r in (r for r in runs if r.method in main):   # the sparsity study's dense point but for the mode
            (a, full), (b, cand) = (split_off(x, "eval", "mode") for x in (r.params, main[r.method]))
            assert a == b and (full, cand) == ("full", "candidates"), r.run_id
    elif name.startswith("cpu_seeds_"):  # other seeds of the main comparison, for pooled paired tests
        assert {"lightgcn", "lightgcn_ft", "bdlm"} <= methods and 42 not in {r.seed for r in batch.runs}
        seed42 = {r.method: r.params for prefix in ("cpu_", "cpu_more_")
                  for r in expand_repo_batch(name.replace("cpu_seeds_", prefix), tmp_path)[1].runs if r.scope == "run"}
        for r in (r for r in batch.runs if r.scope == "run"):   # seed 42's runs but for the seed
            (other, seed), (base, s42) = (split_off(x, "seed") for x in (r.params, seed42[r.method]))
            assert seed != s42
            assert other == base, r.run_id
    elif name.startswith("cpu_ncf_"):  # Table 4 beside the cpu batches
        assert {r.method for r in batch.runs if r.scope == "run"} == {"ncf", "ncf_ft", "bdlm_ncf"}
        assert all(r.params["domain"]["model"] == "ncf" for r in batch.runs if r.scope == "run")
    else:
        assert {"bdlm", "lightgcn", "instructrec"} <= methods
    if name in {f"cpu_{d}" for d in ("ml1m", "amazon-health", "amazon-beauty")}:   # the main ones carry the control
        assert "lightgcn_ft" in methods
    if "aux" in name:
        aux = {r.run_id.split("-")[0] for r in batch.runs if r.flag == "aux"}
        assert {"instructrec+aux", "bdlm+aux"} <= aux
        assert all(r.params["sft"]["aux_tasks"] == "both" for r in batch.runs if r.flag == "aux")
    assert all(r.params["preset"] == spec["preset"] for r in batch.runs)
    # a batch file's entry for a built-in method must keep the bundle's keys (extends: or repeated)
    for r in batch.runs:
        if r.scope == "run" and r.method in METHODS:
            assert METHODS[r.method].items() <= r.overrides.items(), (name, r.run_id)
    if name.startswith("paper_"):
        lams = {r.lambda_ml for r in batch.runs if r.method == "bdlm"}
        assert lams == {0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0}
        assert {"wo_jl", "wo_pe", "wo_et", "bdlm_ncf", "ncf", "gpt4sm", "instructrec", "llmrec"} <= methods
    assert set(INJECTED) == {"dataset", "preset", "data_dir", "output_dir", "seed", "run_dir",
                             "method", "overrides"}


@pytest.mark.parametrize("dataset", ["ml1m", "amazon-health", "amazon-beauty"])
def test_cpu_batches_of_a_dataset_rank_the_same_users(dataset, tmp_path):
    """cpu_, cpu_more_, cpu_aux_ (and cpu_ncf_) fill one Table 3 (and 4): every row must come from the same users (the
    report pairs BDLM with the best baseline on them), the title-likelihood methods on a prefix."""
    users: dict[str, set] = {"ids": set(), "titles": set()}
    shipped = {p.name for p in (REPO / "params" / "batches").glob("*.yaml")}
    for prefix in ("cpu_", "cpu_more_", "cpu_aux_", "cpu_ncf_"):
        if prefix == "cpu_ncf_" and f"{prefix}{dataset}.yaml" not in shipped:
            continue  # Table 4 at CPU scale is shipped for ML-1M only
        _, batch = expand_repo_batch(f"{prefix}{dataset}.yaml", tmp_path)
        for r in batch.runs:
            if r.scope != "run":
                continue
            ev = r.params["eval"]
            kind = "titles" if r.method in ("instructrec", "llmrec") else "ids"
            users[kind].add((ev["max_users"], ev.get("topk_users")))
    assert len(users["ids"]) == 1 and len(users["titles"]) == 1, users
    (binary, ranked), = users["ids"]
    (binary_t, ranked_t), = users["titles"]
    assert binary == binary_t and binary <= ranked_t <= ranked
