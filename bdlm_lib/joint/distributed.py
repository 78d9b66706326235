"""The distributed helpers of joint training: the process group and the DeepSpeed engine that
wraps the LLM (the paper: full-parameter SFT, ZeRO-3, batch 8 per GPU). `run_bdlm` uses them when
params.joint.deepspeed_config is set; the launcher runs the CLI's `joint` command:

    deepspeed --num_gpus 2 -m bdlm_lib.cli joint --dataset ml1m --preset paper \
        --set joint.deepspeed_config=params/deepspeed/zero3.json [--set joint.lambda_ml=0.01 ...]

Single process without the launcher works too (CPU: DS_ACCELERATOR=cpu is set, gloo, world 1).

The same `JointTrainer` runs; only the LLM step differs: the `JointLLM` module (SFT forward +
the batch's id rows) is the DeepSpeed engine's module, `engine.backward` / `engine.step` replace
the optimiser calls, and the optimiser (AdamW from the JSON), the cosine schedule and gradient
clipping live in the engine. Data parallel: global batch = joint.batch_size (default
8 x world size); each rank runs its shard through the LLM; the domain step runs, replicated, on
the all-gathered examples of the global batch, so the small domain model and M stay identical on
every rank. The config's micro batch, lr and clipping are set from the params at start.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """torch.distributed for DeepSpeed: the launcher's env, else a single local process (gloo on
    CPU). Returns (rank, world_size)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        torch.distributed.init_process_group(backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def load_ds_config(path) -> dict:
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = REPO / path
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: DeepSpeed config not found (params.joint.deepspeed_config)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def engine_factory(params, config: dict):
    """`JointTrainer(engine_factory=...)`: wraps the JointLLM module with deepspeed.initialize."""
    def make(module, groups, lr, make_sched):
        import deepspeed
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        cfg = json.loads(json.dumps(config))
        bs = int(params["joint"]["batch_size"] or params["sft"]["batch_size"])
        if bs % world:
            raise ValueError(f"joint.batch_size {bs} is not a multiple of the world size {world}")
        cfg.pop("train_batch_size", None)
        cfg["train_micro_batch_size_per_gpu"] = bs // world
        cfg["gradient_accumulation_steps"] = 1
        cfg["gradient_clipping"] = float(params["sft"]["max_grad_norm"])
        cfg.setdefault("optimizer", {"type": "AdamW", "params": {}})["params"]["lr"] = lr
        if params["llm"]["dtype"] == "bfloat16" and torch.cuda.is_available():
            cfg["bf16"] = {"enabled": True}
        engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=groups, config=cfg,
                                               lr_scheduler=make_sched, dist_init_required=False)
        return engine
    return make
