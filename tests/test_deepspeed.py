"""DeepSpeed path of joint training: the LLM step through `deepspeed.initialize` (ZeRO-3, torch
AdamW, single CPU process on gloo) gives the same per-step losses as the plain path, and the
`bdlm joint` command runs end to end. Same fixture world as test_joint (tiny Llama)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from test_joint import make_trainer, params, world  # noqa: F401  (fixtures)

pytest.importorskip("deepspeed")


@pytest.fixture(scope="module")
def dist_env():
    """One local gloo process group (world 1) for the module: DeepSpeed caches the group, so it is
    not re-created between tests; the environment is restored afterwards."""
    from bdlm_lib.joint.distributed import init_distributed
    saved = dict(os.environ)
    for k in ("MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(k, None)
    init_distributed()
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("stage", [3])
def test_deepspeed_steps_equal_plain_steps(params, dist_env, stage):  # noqa: F811
    from bdlm_lib.joint.distributed import engine_factory, load_ds_config
    p = params(joint__max_steps=3, joint__batch_size=4, joint__lambda_ml=1.0)
    plain, _ = make_trainer(p)
    ref = [plain.run_step(g) for g in range(3)]
    cfg = load_ds_config(f"params/deepspeed/zero{stage}.json")
    assert cfg["zero_optimization"]["stage"] == stage and cfg["optimizer"]["params"]["torch_adam"]
    from bdlm_lib.data import load_dataset
    from bdlm_lib.domain import build_domain_model
    from bdlm_lib.joint import build_joint
    from bdlm_lib.llm.backbone import load_backbone
    ds = load_dataset(p, verbose=False)
    torch.manual_seed(0)
    dom = build_domain_model(p.domain.model, ds.n_users, ds.n_items, p, ds=ds)
    llm, tok = load_backbone(p.llm.backbone)
    tr = build_joint(p, ds, dom, llm, tok, progress=False, engine_factory=engine_factory(p, cfg))
    assert tr.engine is not None and tr.engine.zero_optimization_stage() == stage
    got = [tr.run_step(g) for g in range(3)]
    for a, b in zip(ref, got):
        for k in ("L_LLM", "L_D", "L_ML^L", "L_ML^D", "dist_llm_domain"):
            assert math.isclose(a[k], b[k], rel_tol=1e-4, abs_tol=1e-10), (k, a[k], b[k])
    assert ref[-1]["L_LLM"] != ref[0]["L_LLM"]        # the steps did train


def test_deepspeed_joint_command_end_to_end(world, dist_env, tmp_path):  # noqa: F811
    from bdlm_lib.cli import main
    assert main(["joint", "--dataset", str(world["data"]), "--preset", "smoke", "--set",
                 "joint.deepspeed_config=params/deepspeed/zero3.json",
                 f"output_dir={tmp_path / 'out'}", "data.sample_users=null",
                 f"llm.backbone={world['llm']}", "joint.max_steps=2",
                 "joint.batch_size=4", "eval.max_users=8", "domain.progress=false"]) == 0
    assert torch.distributed.is_initialized()     # the caller's group is left alone
    run = next((tmp_path / "out").glob("*/bdlm/*-ds"))
    m = json.loads((run / "metrics.json").read_text())
    assert m["deepspeed"] is True and m["world_size"] == 1 and m["topk"]["n_users"] == 8
    assert 0 <= m["llm"]["topk"]["HR@1"] <= 1 and (run / "sharing.safetensors").exists()
    assert not (run / "checkpoint_ds").exists()
