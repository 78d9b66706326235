"""Run artefacts: atomic writes leave nothing half-written; finished runs are never overwritten."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from bdlm_lib.runs import _umask, atomic_dir, atomic_write_text, read_json, write_json
from bdlm_lib.store import new_run_dir, write_run


def test_atomic_write_and_permissions(tmp_path):
    p = tmp_path / "a" / "b.txt"
    atomic_write_text(p, "hello")
    assert p.read_text() == "hello" and os.listdir(p.parent) == ["b.txt"]
    mode = stat.S_IMODE(p.stat().st_mode)
    assert mode == 0o666 & ~_umask()              # what open() would give, not mkstemp's 0600


def test_write_json_numpy_and_failure_keeps_old(tmp_path):
    p = tmp_path / "m.json"
    write_json(p, {"a": np.int64(3), "b": np.float32(0.5), "c": np.arange(2), "d": tmp_path})
    assert read_json(p) == {"a": 3, "b": 0.5, "c": [0, 1], "d": str(tmp_path)}
    with pytest.raises(TypeError):
        write_json(p, {"bad": object()})
    assert read_json(p)["a"] == 3 and sorted(os.listdir(tmp_path)) == ["m.json"]


def test_atomic_dir_success_and_failure(tmp_path):
    target = tmp_path / "x" / "y" / "prepared"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.parquet").write_text("half")
            raise RuntimeError("boom")
    assert not (tmp_path / "x").exists()          # neither the folder nor the parents it made
    with atomic_dir(target) as tmp:
        (tmp / "f.txt").write_text("ok")
    assert os.listdir(target) == ["f.txt"] and os.listdir(target.parent) == ["prepared"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~_umask()   # not mkdtemp's 0700
    with atomic_dir(target) as tmp:               # replaces a previous build wholesale
        (tmp / "g.txt").write_text("new")
    assert os.listdir(target) == ["g.txt"]


def test_new_run_dir_never_overwrites_a_finished_run(tmp_path):
    r1 = new_run_dir(tmp_path, "mf")
    assert new_run_dir(tmp_path, "mf") == r1                  # unfinished: reused
    write_run(r1, {"seed": 1}, {"topk": {"HR@1": 0.5}}, extra={"history.json": [1, 2]})
    assert sorted(os.listdir(r1)) == ["environment.json", "fingerprint.json", "history.json", "metrics.json",
                                      "params.yaml"]
    r2 = new_run_dir(tmp_path, "mf")
    assert r2.name == "mf-2" and r2 != r1
    write_run(r2, None, {"x": 1})
    assert new_run_dir(tmp_path, "mf").name == "mf-3"
    assert new_run_dir(tmp_path, "mf", overwrite=True) == r1
    env = json.loads((r1 / "environment.json").read_text())
    assert {"python", "numpy", "time_utc"} <= set(env)
