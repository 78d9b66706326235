"""The distributed helpers of joint training: the process group and the DeepSpeed engine that
wraps the LLM (the paper: full-parameter SFT, ZeRO-3, batch 8 per GPU). `run_bdlm` uses them when
params.joint.deepspeed_config is set; the launcher runs the CLI's `joint` command:

    deepspeed --num_gpus 2 --module bdlm_lib.cli joint --dataset ml1m --preset paper \
        --set joint.deepspeed_config=params/deepspeed/zero3.json [joint.lambda_ml=0.01 ...]

Single process without the launcher works too (CPU: DS_ACCELERATOR=cpu is set, gloo, world 1).

The same `JointTrainer` runs; only the LLM step differs: the `JointLLM` module (SFT forward +
the batch's id rows) is the DeepSpeed engine's module, `engine.backward` / `engine.step` replace
the optimiser calls, and the optimiser (AdamW from the JSON), the cosine schedule and gradient
clipping live in the engine. Data parallel: global batch = joint.batch_size (null:
sft.batch_size) split over the ranks (the paper's 8 per GPU on 2 GPUs: joint.batch_size=16); each
rank runs its shard through the LLM; the domain step runs, replicated, on
the gathered examples of the global batch, so the small domain model and M stay identical on
every rank. The config's micro batch, lr and clipping are set from the params at start.

Several processes compute what one process computes: the LLM loss of a rank's shard is weighted by
its share of the global batch's answer tokens (`token_weighted`), so the gradient DeepSpeed
averages over ranks is that of the global batch's token mean; every rank computes L_ML^L on the
global batch's id rows (identical on every rank, so the average is that term's gradient); the
domain step's examples are the global batch's item mentions in prompt order
(`gather_item_hidden`), drawn with the same generator as in one process. A global batch smaller
than the world (an epoch's last one) gives a rank an empty shard: it runs one prompt with weight 0
(ZeRO-3's collectives need every rank's forward and backward). `sync_replicas` measures, and
removes, any drift of the replicated domain side from rank 0's copy.
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


def _comm_device() -> str:
    return "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"


def shard(prompts: list, rank: int, world: int) -> tuple[list, list]:
    """(prompts this rank runs through the LLM, its real share): prompts[rank::world]; an empty
    share runs the global batch's first prompt, weighted 0 (`token_weighted`)."""
    mine = prompts[rank::world]
    return (mine if mine else prompts[:1]), mine


def answer_tokens(prompts) -> int:
    """The answer tokens of `prompts` (what `lm_forward`'s token-mean loss averages over)."""
    return int(sum(len(p.answer_ids) for p in prompts))


def token_weighted(loss, n_local: int, world: int):
    """(loss for this rank's backward, the global batch's token-mean loss as a float): `loss` is
    this rank's token mean over `n_local` answer tokens; scaled by world x n_local / n_global, the
    average over ranks of the gradients (DeepSpeed's) is the global token mean's gradient."""
    t = torch.tensor([float(loss.detach()) * n_local, float(n_local)], dtype=torch.float64)
    t = t.to(_comm_device())
    torch.distributed.all_reduce(t)
    total, n_global = float(t[0]), float(t[1])
    return loss * (world * n_local / max(n_global, 1.0)), total / max(n_global, 1.0)


def gather_item_hidden(h_local, mine: list, prompts: list, rank: int, world: int):
    """The global batch's candidate mentions as one process sees them: every rank's h_L rows
    (`item_hidden(out, mine, "candidates")`, in its shard's prompt order) all-gathered and put back
    into global prompt order. Returns (users, items, h_L) on every rank."""
    from .llm_io import item_mentions
    per_prompt = [len(item_mentions([p], "candidates")[0]) for p in prompts]
    sizes = [sum(per_prompt[r::world]) for r in range(world)]
    assert sizes[rank] == len(h_local), (sizes, rank, len(h_local))
    dev = _comm_device()
    width = max(max(sizes), 1)
    flat = torch.zeros(width, h_local.shape[1], dtype=h_local.dtype, device=dev)
    flat[:len(h_local)] = h_local.to(dev)
    parts = [torch.zeros_like(flat) for _ in range(world)]
    torch.distributed.all_gather(parts, flat)
    chunks = []      # per rank: its prompts' rows, split per prompt
    for r, part in enumerate(parts):
        counts = per_prompt[r::world]
        chunks.append(list(torch.split(part[:sizes[r]].cpu(), counts)) if counts else [])
    rows = [chunks[j % world][j // world] for j in range(len(prompts))]
    h = torch.cat(rows) if rows else h_local.new_zeros(0, h_local.shape[1]).cpu()
    _, _, users, items = item_mentions(prompts, "candidates")
    return users, items, h.float()


@torch.no_grad()
def sync_replicas(tensors) -> float:
    """Copy rank 0's values of the replicated `tensors` (the domain side, M) to every rank; returns
    the largest absolute difference found before (the same on every rank; 0.0 when the replicas
    had stayed identical, as they do on a CPU)."""
    dev = _comm_device()
    worst = torch.zeros(1, dtype=torch.float64, device=dev)
    for t in tensors:
        ref = t.detach().to(dev).clone()
        torch.distributed.broadcast(ref, 0)
        if t.numel():
            worst = torch.maximum(worst, (t.detach().to(dev) - ref).abs().max().double().reshape(1))
        t.data.copy_(ref.to(t.device))
    torch.distributed.all_reduce(worst, op=torch.distributed.ReduceOp.MAX)
    return float(worst)
