"""A user's own dataset, end to end: a folder of two TSV files goes through `bdlm prep`, a batch of
the real notebooks (data preparation, LightGCN, the report) and `bdlm report`, as the README says."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _bdlm(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bdlm_lib.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_tsv_folder_through_prep_batch_and_report(fixture_dirs, tmp_path):
    data = tmp_path / "my-shop"
    shutil.copytree(fixture_dirs["tsv"], data)
    out = tmp_path / "out"
    p = _bdlm("prep", "--dataset", data, "--preset", "smoke", "--output-dir", out)
    assert p.returncode == 0, p.stderr
    assert "my-shop" in p.stdout and "#interactions" in p.stdout          # Table 1

    spec = yaml.safe_load((REPO / "params" / "batches" / "demo_ml1m.yaml").read_text())
    spec.update(name="mine", preset="smoke", notebooks_dir=str(REPO / "notebooks"),
                grid={"datasets": [str(data)], "methods": ["lightgcn"], "seeds": [42]},
                notebooks=[n for n in spec["notebooks"] if n["notebook"].startswith(("01_", "02_", "09_"))],
                overrides={"domain.progress": False})
    batch = tmp_path / "mine.yaml"
    batch.write_text(yaml.safe_dump(spec, sort_keys=False))
    p = _bdlm("batch", batch, "--output-dir", out)
    assert p.returncode == 0, p.stderr + p.stdout
    run = out / "my-shop" / "mine" / "lightgcn-s42"
    m = json.loads((run / "metrics.json").read_text())
    assert m["topk"]["n_users"] > 0 and 0 <= m["topk"]["HR@1"] <= 1
    summary = json.loads((out / "my-shop" / "mine" / "summary.json").read_text())
    assert {r["run_id"]: r["status"] for r in summary["runs"]} == {"data_prep-s42": "ok", "lightgcn-s42": "ok",
                                                                   "report": "ok"}

    p = _bdlm("report", "--output-dir", out)
    assert p.returncode == 0, p.stderr
    table3 = (out / "report" / "table3.csv").read_text()
    assert "LightGCN" in table3 and "my-shop HR@1" in table3


def test_recbole_export_round_trips(fixture_dirs, make_params, tmp_path):
    """The exported atomic files hold the same users, items, interactions and candidates."""
    from bdlm_lib.data import load_dataset
    from bdlm_lib.data.export import read_recbole
    p = make_params(fixture_dirs["tsv"])
    ds = load_dataset(p, verbose=False)
    out = tmp_path / "rb"
    r = _bdlm("export", "--dataset", fixture_dirs["tsv"], "--preset", "smoke", "--output-dir", out,
              "--set", "data.sample_users=null")
    assert r.returncode == 0, r.stderr
    folder = next(out.glob("*/export/recbole/*"))
    back = read_recbole(folder, "tsv")
    raw_u = ds.users.set_index("user")["raw_id"].astype(str)
    raw_i = ds.items.set_index("item")["raw_id"].astype(str)
    for split in ("train", "valid", "test"):
        ours = getattr(ds, split)
        got = back[f"{split}.inter"]
        assert list(got["user_id"]) == list(raw_u.loc[ours["user"]])
        assert list(got["item_id"]) == list(raw_i.loc[ours["item"]])
        assert list(got["timestamp"].astype(float)) == list(ours["timestamp"].astype(float))
    for split in ("valid", "test"):
        c = ds.topk(split)
        got = back[f"{split}.cand"]
        assert list(got["item_id"]) == list(raw_i.loc[c["item"]])
        assert list(got["user_id"]) == list(raw_u.loc[c["user"]])
        assert list(got["label"].astype(float)) == list(c["label"].astype(float))
        assert (got.groupby("user_id")["label"].apply(lambda s: (s.astype(float) == 1).sum()) == 1).all()
    assert sorted(back["item"]["item_id"]) == sorted(raw_i)
