"""Never a stale or silent result: run identity, cache validity, input parsing, safe paths,
parameter ranges, one-line errors, the output lock and a quiet console. Each test is one kind of
bad input or fault, tried the way a user meets it (the CLI where the CLI is what a user runs)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bdlm_lib.cli import main as cli
from bdlm_lib.data import DataError, load_dataset
from bdlm_lib.experiments.batch import BatchError, run_batch
from bdlm_lib.params import PARAMS_DIR, ParamsError, load_params, read_rules
from bdlm_lib.runs import read_json
from bdlm_lib.store import LOCK, OutputLock, StoreError, inside, run_state
from test_batch import write_batch, write_notebook

REPO = Path(__file__).resolve().parent.parent


def _cli(*args) -> tuple[int, str]:
    """(exit code, stderr) of `bdlm ...` in a fresh process, as a user runs it."""
    p = subprocess.run([sys.executable, "-m", "bdlm_lib.cli", *map(str, args)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stderr


# ---------------------------------------------------------------- 1. run identity
def test_changed_batch_stops_naming_runs_and_keys_then_reruns_on_request(tmp_path):
    write_notebook(tmp_path / "tiny.ipynb")
    out = tmp_path / "out"
    b = write_batch(tmp_path, overrides={"domain.epochs": 2},
                    grid={"datasets": ["ml1m"], "methods": ["gmf", "ncf"], "seeds": [1]})
    run_batch(b, output_dir=out)
    run = out / "ml1m" / "t" / "gmf-s1"
    assert read_json(run / "fingerprint.json")["params"]["domain.epochs"] == 2
    b = write_batch(tmp_path, overrides={"domain.epochs": 3},
                    grid={"datasets": ["ml1m"], "methods": ["gmf", "ncf"], "seeds": [1]})
    stamp = (run / "metrics.json").stat().st_mtime_ns
    with pytest.raises(BatchError, match=r"2 stored run\(s\).*ml1m/gmf-s1.*domain\.epochs: 2 -> 3.*--rerun-changed"):
        run_batch(b, output_dir=out)
    assert (run / "metrics.json").stat().st_mtime_ns == stamp          # nothing ran, nothing overwritten
    summary = run_batch(b, output_dir=out, rerun_changed=True)
    assert {r["status"] for r in summary["runs"]} == {"ok"}
    assert yaml.safe_load((run / "params.yaml").read_text())["domain"]["epochs"] == 3
    assert run_state(run, load_params("ml1m", "smoke", {"domain.epochs": 3, "domain.model": "mf",
                                                          "seed": 1, "output_dir": str(out)}))[0] == "finished"
    again = run_batch(b, output_dir=out)                                  # same params: resume skips
    assert {r["status"] for r in again["runs"]} == {"done"}


def test_another_models_override_leaves_a_run_as_it_was(tmp_path):
    """A run's identity holds only the per-model overrides of its own domain model: tuning
    LightGCN's batch size re-runs LightGCN, not GMF, nor the per-dataset run (data preparation,
    which reads only what shapes the data); a fingerprint.json stored with every model's
    overrides (as written before this rule) still matches."""
    write_notebook(tmp_path / "tiny.ipynb")
    out = tmp_path / "out"
    grid = {"datasets": ["ml1m"], "methods": ["gmf", "lightgcn"], "seeds": [1]}
    nbs = [{"notebook": "tiny.ipynb", "per": "dataset", "id": "prep"}, {"notebook": "tiny.ipynb"}]
    write = lambda over: write_batch(tmp_path, overrides=over, grid=grid, notebooks=nbs)  # noqa: E731
    run_batch(write({"domain.epochs": 1}), output_dir=out)
    gmf, lgcn = out / "ml1m" / "t" / "gmf-s1", out / "ml1m" / "t" / "lightgcn-s1"
    stored = read_json(gmf / "fingerprint.json")["params"]
    assert "domain.per_model.mf.batch_size" in stored and "domain.per_model.lightgcn.batch_size" not in stored
    stored["domain.per_model.lightgcn.batch_size"] = 4096            # the older, wider identity
    (gmf / "fingerprint.json").write_text(json.dumps({"params": stored}))
    changed = {"domain.epochs": 1, "domain.per_model.lightgcn.batch_size": 512}
    with pytest.raises(BatchError, match=r"1 stored run\(s\).*: ml1m/lightgcn-s1;.*per_model\.lightgcn\.batch_size"):
        run_batch(write(changed), output_dir=out)
    # a change of what shapes the data does reach the per-dataset run (and every other)
    with pytest.raises(BatchError, match=r"3 stored run\(s\).*ml1m/prep-s1.*data\.sample_users"):
        run_batch(write({**changed, "data.sample_users": 7}), output_dir=out)
    params = lambda model: load_params("ml1m", "smoke", {**changed, "domain.model": model,  # noqa: E731
                                                         "seed": 1, "output_dir": str(out)})
    assert run_state(gmf, params("mf"))[0] == "finished"
    assert run_state(lgcn, params("lightgcn")) == ("changed", ["domain.per_model.lightgcn.batch_size"])
    # and GMF's own override does change GMF
    assert run_state(gmf, load_params("ml1m", "smoke", {**changed, "domain.model": "mf", "seed": 1,
                                                        "domain.per_model.mf.lr": 0.5}))[0] == "changed"


# ---------------------------------------------------------------- 2. prepared-data cache
@pytest.fixture
def tsv_copy(fixture_dirs, tmp_path):
    d = tmp_path / "mydata"
    shutil.copytree(fixture_dirs["tsv"], d)
    return d


def test_prepared_cache_follows_its_input_files(tsv_copy, make_params, tmp_path, capsys):
    p = make_params(tsv_copy)
    first = load_dataset(p)
    n = first.stats["interactions"]
    # touching a file (same bytes, new mtime) keeps the cache: the sha256 still matches
    os.utime(tsv_copy / "interactions.tsv", None)
    assert load_dataset(p).stats["interactions"] == n
    assert "stale" not in capsys.readouterr().out
    # removing a user's rows changes the data: rebuilt, and said
    lines = (tsv_copy / "interactions.tsv").read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if not ln.startswith("3\t")]
    (tsv_copy / "interactions.tsv").write_text("".join(kept))
    rebuilt = load_dataset(p)
    assert "stale" in capsys.readouterr().out and rebuilt.stats["interactions"] < n
    # the same dataset name read from another, corrupt copy: not the old cache, an error naming the file
    (tsv_copy / "item_titles.tsv").write_text("item_id\ttitle\n1\t\"broken\n2\tx\n")
    with pytest.raises(DataError, match=r"item_titles\.tsv: line 2"):
        load_dataset(p)


# ---------------------------------------------------------------- 3. input parsing
def test_unbalanced_quote_in_titles_is_refused_with_its_line(tsv_copy, make_params):
    t = tsv_copy / "item_titles.tsv"
    rows = t.read_text().splitlines()
    rows[3] = rows[3].split("\t")[0] + '\t"Unclosed title'
    rows[6] = rows[6].split("\t")[0] + '\t"Another unclosed'
    t.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"item_titles\.tsv: line 4: .*unclosed"):
        load_dataset(make_params(tsv_copy))


def test_quoted_title_with_a_newline_is_still_read(tsv_copy, make_params):
    t = tsv_copy / "item_titles.tsv"
    rows = t.read_text().splitlines()
    item = rows[3].split("\t")[0]
    rows[3] = f'{item}\t"Two\nlines"'
    t.write_text("\n".join(rows) + "\n")
    ds = load_dataset(make_params(tsv_copy))
    assert "Two lines" in ds.titles


# ---------------------------------------------------------------- 4. paths
@pytest.mark.parametrize("spec, match", [
    ({"name": "../../x"}, r"name '\.\./\.\./x': not a plain name"),
    ({"methods": {"/abs/path": {"domain.model": "mf"}},
      "grid": {"datasets": ["ml1m"], "methods": ["/abs/path"], "seeds": [1]}}, r"methods key '/abs/path'"),
    ({"overrides": {"joint.variant": ".."}, "grid": {"datasets": ["ml1m"], "methods": ["bdlm"]}},
     r"joint\.variant"),
    ({"notebooks": [{"notebook": "tiny.ipynb", "id": "../up"}]}, r"notebooks\[0\]\.id"),
])
def test_names_that_would_escape_the_output_folder_are_refused(tmp_path, spec, match):
    write_notebook(tmp_path / "tiny.ipynb")
    out = tmp_path / "out"
    with pytest.raises(BatchError, match=match):
        run_batch(write_batch(tmp_path, **spec), output_dir=out)
    assert not (tmp_path / "x").exists() and not Path("/abs").exists()
    assert not out.exists() or not any(out.rglob("params.yaml"))


def test_inside_refuses_paths_out_of_the_root(tmp_path):
    assert inside(tmp_path, tmp_path / "a" / "b") == (tmp_path / "a" / "b").resolve()
    for bad in (tmp_path / ".." / "x", Path("/etc")):
        with pytest.raises(StoreError, match="outside the output folder"):
            inside(tmp_path, bad)


# ---------------------------------------------------------------- 5. ranges and choices
def test_every_key_in_base_yaml_declares_its_range():
    from bdlm_lib.store import flat
    keys = set(flat(yaml.safe_load((PARAMS_DIR / "base.yaml").read_text())))
    assert keys - set(read_rules(PARAMS_DIR / "base.yaml")) == set()


@pytest.mark.parametrize("key, value", [
    ("domain.dim", 0), ("eval.ks", [0, -1]), ("domain.epochs", -3), ("domain.batch_size", 0),
    ("domain.lr", -1.0), ("llm.dtype", "float64"), ("sft.lr", -5), ("report.alpha", 5),
    ("llm.task", "nonsense"), ("joint.lambda_ml", -0.5), ("domain.dropout", 1.0),
    ("domain.per_model.sasrec.batch_size", 0),
])
def test_out_of_range_values_fail_at_load_naming_the_key(key, value):
    with pytest.raises(ParamsError, match=rf"'{key}' must be"):
        load_params("ml1m", "smoke", {key: value})


def test_a_batch_checks_every_run_before_the_first_runs(tmp_path):
    write_notebook(tmp_path / "tiny.ipynb")
    b = write_batch(tmp_path, grid={"datasets": ["ml1m"], "methods": ["lightgcn", "bdlm"],
                                    "lambda_ml": [0.1, -1], "seeds": [1]})
    with pytest.raises(BatchError, match=r"lambda_ml: -1 is not a number >= 0"):
        run_batch(b, output_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "ml1m").exists()


# ---------------------------------------------------------------- 6. one line, not a traceback
@pytest.mark.parametrize("spec, match", [
    ({"overrides": 5}, r"overrides: expected a mapping"),
    ({"grid": "ml1m"}, r"grid: expected a mapping"),
    ({"grid": {"datasets": ["ml1m"], "methods": ["gmf"], "seeds": ["abc"]}}, r"seeds: 'abc' is not an integer"),
])
def test_wrongly_typed_batch_keys_are_one_line_naming_the_key(tmp_path, spec, match):
    write_notebook(tmp_path / "tiny.ipynb")
    code, err = _cli("batch", write_batch(tmp_path, **spec), "--output-dir", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("bdlm batch: error: ") and __import__("re").search(match, err), err


def test_unwritable_output_folder_is_one_line(tmp_path):
    write_notebook(tmp_path / "tiny.ipynb")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should be")
    code, err = _cli("batch", write_batch(tmp_path), "--output-dir", blocker / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(blocker) in err, err


SLOW_CELL = """from pathlib import Path
import time
Path(run_dir, "started").write_text("1")
time.sleep(60)"""


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_marks_the_run_interrupted_and_says_one_line(tmp_path, stop):
    """Ctrl-C or SIGTERM: the run is marked interrupted with its time, one line says so; the same
    command resumes it and run.json's seconds count both attempts."""
    nb = write_notebook(tmp_path / "tiny.ipynb")
    import nbformat
    book = nbformat.read(str(nb), as_version=4)
    fast = book.cells[-1].source
    book.cells[-1].source = SLOW_CELL
    nbformat.write(book, str(nb))
    out = tmp_path / "out"
    # SIGINT as a terminal leaves it: a test suite started in the background (CI under nohup, `&`)
    # inherits SIGINT ignored, and the batch would then never see the Ctrl-C this test sends
    p = subprocess.Popen([sys.executable, "-m", "bdlm_lib.cli", "batch", str(write_batch(tmp_path)),
                          "--output-dir", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = out / "ml1m" / "t" / "lightgcn-s1"
    deadline = time.time() + 120
    while not (run / "started").exists() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)
    p.send_signal(stop)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("bdlm batch: interrupted during ml1m/lightgcn-s1")
    assert "Traceback" not in err
    first = read_json(run / "run.json")
    assert first["status"] == "interrupted" and first["seconds"] >= 1.0
    assert not (run / "metrics.json").exists()
    book.cells[-1].source = fast
    nbformat.write(book, str(nb))
    assert cli(["batch", str(write_batch(tmp_path)), "--output-dir", str(out)]) == 0
    again = read_json(run / "run.json")
    assert again["status"] == "ok" and len(again["attempts"]) == 2 and again["attempts"][0] == first["seconds"]
    assert again["seconds"] == pytest.approx(sum(again["attempts"]), abs=0.11)


# ---------------------------------------------------------------- 7. errors that name the file
def test_corrupt_artefacts_are_named(tmp_path):
    from bdlm_lib.domain.run import load_domain
    from bdlm_lib.report import build_report
    run = tmp_path / "ml1m" / "b" / "lightgcn-s1"
    run.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{trunc")
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt model file"):
        load_domain(run)
    (run / "run.json").write_text('{"method": "lightgcn"}')
    (run / "metrics.json").write_text('{"topk": {"HR@1": 0.')
    with pytest.raises(ValueError, match=r"lightgcn-s1/metrics\.json: corrupt JSON"):
        build_report(tmp_path, n_boot=10)


def test_corrupt_backbone_weights_are_named(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    from bdlm_lib.llm.backbone import BackboneError, load_backbone, resolve_backbone
    folder = tmp_path / "tiny-llama"
    cfg = LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    shutil.copy(resolve_backbone("smollm2-135m-instruct") / "tokenizer.json", folder)
    shutil.copy(resolve_backbone("smollm2-135m-instruct") / "tokenizer_config.json", folder)
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(BackboneError, match=r"tiny-llama: cannot load backbone"):
        load_backbone(str(folder))


# ---------------------------------------------------------------- 8. nothing silently done
def test_only_that_matches_no_run_and_report_of_a_missing_folder_fail(tmp_path):
    write_notebook(tmp_path / "tiny.ipynb")
    with pytest.raises(BatchError, match=r"--only nosuchrun: matches no run"):
        run_batch(write_batch(tmp_path), output_dir=tmp_path / "out", only=["nosuchrun"])
    code, err = _cli("report", "--output-dir", tmp_path / "nowhere")
    assert code == 2 and "nowhere: no such output folder" in err and not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------- 9. the output-folder lock
def test_second_batch_into_a_locked_folder_refuses(tmp_path):
    write_notebook(tmp_path / "tiny.ipynb")
    out = tmp_path / "out"
    with OutputLock(out):
        with pytest.raises(StoreError, match=rf"{LOCK}: another bdlm batch is writing"):
            run_batch(write_batch(tmp_path), output_dir=out)
    assert not (out / "ml1m").exists()
    assert {r["status"] for r in run_batch(write_batch(tmp_path), output_dir=out)["runs"]} == {"ok"}


# ---------------------------------------------------------------- 10. a quiet console
def test_batch_console_has_no_kernel_noise(tmp_path):
    write_notebook(tmp_path / "tiny.ipynb")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "bdlm_lib.cli", "batch", str(write_batch(tmp_path)),
                        "--output-dir", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    for noise in ("KeyboardInterrupt caught in kernel", "running over TCP", "IPKernelApp"):
        assert noise not in p.stderr + p.stdout
    assert "lightgcn-s1" in p.stdout and (out / "ml1m" / "t" / "lightgcn-s1" / "kernel.log").exists()
