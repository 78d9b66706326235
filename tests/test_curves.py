"""Live training curves: a domain run, an SFT run and a joint run each write TensorBoard event files
into their own folder, holding the losses (and validation metrics) their JSON history holds, read
back with TensorBoard's own EventAccumulator; a resumed writer replaces the steps it repeats."""
from __future__ import annotations

import json

import pytest

from test_joint import make_trainer, params, world  # noqa: F401  (fixtures)

pytest.importorskip("tensorboard")


def scalars(run_dir) -> dict:
    """{tag: [(step, value)]} of every event file under run_dir/tensorboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from bdlm_lib.curves import FOLDER
    acc = EventAccumulator(str(run_dir / FOLDER))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_domain_run_writes_its_losses_to_tensorboard(make_params, fixture_dirs):
    from bdlm_lib.data import load_dataset
    from bdlm_lib.domain import run_domain
    p = make_params(fixture_dirs["tsv"], "smoke", domain__progress=False, domain__epochs=3, domain__patience=5)
    _, _, run_dir = run_domain(p, load_dataset(p, verbose=False))
    hist = json.loads((run_dir / "history.json").read_text())
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    got = scalars(run_dir)
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3]
    assert [v for _, v in got["train/loss"]] == pytest.approx([r["loss"] for r in hist], rel=1e-6)
    assert [v for _, v in got["valid/HR_1"]] == pytest.approx([r["valid_hr1"] for r in hist], rel=1e-6)


def test_resumed_writer_replaces_the_repeated_steps(tmp_path):
    from bdlm_lib.curves import Curves
    with Curves(tmp_path) as c:
        for step in (1, 2, 3):
            c.scalars(step, {"loss": 10.0 + step, "skipped": None, "phase": "llm"})
    with Curves(tmp_path) as c:          # resumed from the checkpoint of step 2
        c.open(purge_step=3)
        for step in (3, 4):
            c.scalars(step, {"loss": 20.0 + step})
    assert scalars(tmp_path) == {"train/loss": [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]}


def test_sft_and_joint_runs_write_their_curves(params, tmp_path):  # noqa: F811
    from bdlm_lib.llm.sft import sft_train
    p = params(joint__max_steps=2, joint__batch_size=4, joint__valid_users=6)
    tr, _ = make_trainer(p, run_dir=tmp_path / "joint")
    hist = tr.train()
    got = scalars(tmp_path / "joint")
    assert [v for _, v in got["train/L_LLM"]] == pytest.approx([r["L_LLM"] for r in hist["steps"]], rel=1e-6)
    assert {"train/L_D", "train/L_ML_L", "train/dist_llm_domain", "valid/llm_HR_1", "valid/drs_HR_1"} <= set(got)
    model, tok = tr.llm, tr.tok
    h = sft_train(model, tok, tr.samples[:8], p, run_dir=tmp_path / "sft", progress=False)
    got = scalars(tmp_path / "sft")
    assert [v for _, v in got["train/loss"]] == pytest.approx(h["loss"], rel=1e-6) and "train/lr" in got
