"""Several processes compute what one process computes: the joint trainer under the `deepspeed`
launcher, two CPU processes (gloo, ZeRO-3, params/deepspeed/zero3.json), stopped after two steps
and resumed by `bdlm joint` (every rank reloading its own shard), gives the per-step losses and
distances of one plain process on the same data, domain model and tiny Llama, and ends with the
same domain side, M and LLM id rows (to 1e-5 relative: float sums in another order). Its last
global batch holds one prompt, so rank 1 runs a zero-weight shard there; the replicated domain
side is identical on both ranks at every validation (no drift to remove)."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_joint import params, world  # noqa: F401  (fixtures)

pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-5, 1e-7     # measured: 4e-7 relative on the losses, 1e-8 absolute on the end state
TERMS = ("L_LLM", "L_D", "L_ML^L", "L_ML^D", "dist_llm_M", "dist_domain_M", "dist_llm_domain")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(world, params, tmp_path):  # noqa: F811
    from bdlm_lib.joint.llm_io import id_tables
    from bdlm_lib.joint.run import build_joint, load_inputs
    out = tmp_path / "out"
    # 3 users, 9 samples in batches of 4: steps of 4, 4 and 1 prompts (2, 2 and 1 or 0 per rank)
    over = {"sft.max_train_users": 3, "joint.max_steps": None, "joint.batch_size": 4,
            "joint.eval_every": 2, "joint.valid_users": 6, "eval.max_users": 6}
    # one plain process; it prepares the data and trains the domain model the two processes reuse
    p = params(output_dir=str(out), **{k.replace(".", "__"): v for k, v in over.items()})
    ds, dom, dom_dir, llm, tok = load_inputs(p, verbose=False)
    tr = build_joint(p, ds, dom, llm, tok, progress=False)
    ref = tr.train()

    sets = [f"{k}={'null' if v is None else v}" for k, v in over.items()]
    sets += [f"output_dir={out}", "data.sample_users=null", f"llm.backbone={world['llm']}",
             "domain.progress=false", "joint.deepspeed_config=params/deepspeed/zero3.json"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2",
           "--master_port", str(_port()), str(REPO / "tests" / "distributed_worker.py"),
           "--stop-after", "2", "--dataset", str(world["data"]), "--preset", "smoke", "--set", *sets]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])

    run = next(out.rglob("bdlm/*-ds"))
    m = json.loads((run / "metrics.json").read_text())
    hist = json.loads((run / "history.json").read_text())
    assert m["deepspeed"] is True and m["world_size"] == 2 and m["domain_run"] == str(dom_dir)
    assert hist["resumed_from_step"] == 2
    shards = json.loads((out / "ckpt.json").read_text())   # each rank wrote its own shard
    assert {"checkpoint/trainer.json", "checkpoint_ds/step-2/zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "checkpoint_ds/step-2/zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= set(shards), shards
    assert not (run / "checkpoint").exists() and not (run / "checkpoint_ds").exists()
    assert [(v["step"], v["replica_max_diff"]) for v in hist["valid"]] == [(2, 0.0), (3, 0.0)]

    assert hist["n_samples"] == ref["n_samples"] == 9 and len(hist["steps"]) == len(ref["steps"]) == 3
    for a, b in zip(ref["steps"], hist["steps"]):
        for k in TERMS:
            assert math.isclose(a[k], b[k], rel_tol=RTOL, abs_tol=ATOL), (a["step"], k, a[k], b[k])
    assert [v["llm_HR@1"] for v in ref["valid"]] == [v["llm_HR@1"] for v in hist["valid"]]
    # the end state (written before the best states are loaded for testing)
    U, I = tr.enhanced.domain.embeddings()
    LU, LI = id_tables(tr.llm, tr.tm)
    got_dom, got_m = load_file(str(run / "domain.safetensors")), load_file(str(run / "sharing.safetensors"))
    got_rows = load_file(str(run / "llm_rows.safetensors"))
    for want, got in ((U, got_dom["user_raw"]), (I, got_dom["item_raw"]), (tr.M.M_U, got_m["user"]),
                      (tr.M.M_I, got_m["item"]), (LU, got_rows["user"]), (LI, got_rows["item"])):
        torch.testing.assert_close(got, want.detach().float().cpu(), rtol=RTOL, atol=ATOL)
