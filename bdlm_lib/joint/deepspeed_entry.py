"""Joint training with the LLM wrapped by `deepspeed.initialize` (the paper: full-parameter SFT,
ZeRO-3, batch 8 per GPU).

    deepspeed --num_gpus 2 -m bdlm_lib.joint.deepspeed_entry --dataset ml1m --preset paper \
        [--deepspeed_config params/deepspeed/zero3.json] [--set joint.lambda_ml=0.01 ...]

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

import argparse
import json
import os
import socket
import time
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
        bs = int(params["joint"].get("batch_size") or params["sft"]["batch_size"])
        if bs % world:
            raise ValueError(f"joint.batch_size {bs} is not a multiple of the world size {world}")
        cfg.pop("train_batch_size", None)
        cfg["train_micro_batch_size_per_gpu"] = bs // world
        cfg["gradient_accumulation_steps"] = 1
        cfg["gradient_clipping"] = float(params["sft"].get("max_grad_norm") or 1.0)
        cfg.setdefault("optimizer", {"type": "AdamW", "params": {}})["params"]["lr"] = lr
        if params["llm"].get("dtype") == "bfloat16" and torch.cuda.is_available():
            cfg["bf16"] = {"enabled": True}
        engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=groups, config=cfg,
                                               lr_scheduler=make_sched, dist_init_required=False)
        return engine
    return make


def run_bdlm_deepspeed(params, ds=None, domain_run=None, progress: bool = True):
    """`run_bdlm` with the LLM step under DeepSpeed; returns (metrics_llm, metrics_drs, run_dir)."""
    from ..data import load_dataset
    from ..store import dataset_root
    from .run import build_joint, claim_run_dir, finish_run, load_inputs, pretrained_domain, variant_name
    rank, world = init_distributed()
    t0 = time.perf_counter()
    if params["sft"]["trainable"] != "full":
        raise ValueError("deepspeed_entry: params.sft.trainable must be 'full' (the paper's setting; "
                         "the row-mask hooks of 'top'/'lora' are not ZeRO-3 aware)")
    cfg_path = params["joint"].get("deepspeed_config") or "params/deepspeed/zero3.json"
    config = load_ds_config(cfg_path)
    if ds is None:
        ds = load_dataset(params, verbose=rank == 0)
    if rank == 0:     # a missing domain run is trained once, by rank 0
        pretrained_domain(params, ds, domain_run)
    torch.distributed.barrier()
    ds, domain, domain_dir, llm, tok = load_inputs(params, ds, domain_run, verbose=rank == 0)
    parent = dataset_root(params) / "bdlm"
    name = variant_name(params) + "-ds"
    run_dir = claim_run_dir(parent, name, params) if rank == 0 else None
    holder = [str(run_dir) if run_dir else None]
    torch.distributed.broadcast_object_list(holder, src=0)
    run_dir = Path(holder[0])
    trainer = build_joint(params, ds, domain, llm, tok, run_dir=run_dir, progress=progress and rank == 0,
                          engine_factory=engine_factory(params, config))
    trainer.train()
    return finish_run(trainer, params, ds, run_dir, domain_dir, t0, progress)


def main(argv=None) -> None:
    from .. import load_params
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml1m")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--deepspeed_config", default=None, help="JSON (default params/deepspeed/zero3.json)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="parameter override, e.g. joint.lambda_ml=0.01 (YAML value)")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the launcher's
    args = ap.parse_args(argv)
    from ..cli import parse_overrides
    over = parse_overrides(args.set)
    if args.deepspeed_config:
        over["joint.deepspeed_config"] = args.deepspeed_config
    params = load_params(args.dataset, args.preset, over)
    created = not torch.distributed.is_initialized()
    m_llm, m_drs, run_dir = run_bdlm_deepspeed(params)
    if torch.distributed.get_rank() == 0:
        print(f"BDLM-llm HR@1 {m_llm['topk']['HR@1']:.4f}  BDLM-drs HR@1 {m_drs['topk']['HR@1']:.4f}  -> {run_dir}")
    if created:   # (DeepSpeed caches the group: a caller that made it keeps it)
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
