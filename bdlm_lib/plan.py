"""`bdlm plan`: before a long run, per run of a batch file, the GPU memory a backbone needs and
the wall time to expect, and whether it fits; for a run that does not fit, what would.

    bdlm plan params/batches/paper_ml1m.yaml --backbone llama-2-7b --gpus 2 [--gpu-memory 80]

The backbone is a Hugging Face `config.json`, a model folder holding one, or the name of a
published config in params/backbones; the model is built on the meta device (no weights), so its
parameters, largest layer and LoRA target layers are counted exactly. The batch's runs are the
batch runner's own expansion (`experiments.batch.expand_batch`), so every run's resolved params
(preset, method bundle, overrides, `--set`) decide how it runs:

- how the LLM runs: a joint run (BDLM and its ablations) trains under DeepSpeed when it names
  `joint.deepspeed_config`, or on several GPUs (the launcher; the ZeRO stage of
  params/deepspeed/zero3.json, the paper's, unless the run names another config); every other LLM
  training (SFT runs, a joint run on one GPU) is plain PyTorch on one GPU, and a run that only
  scores (LLM-Rec, GPT4SM's features) holds the weights alone.
- model states per GPU: DeepSpeed's own ZeRO estimators (`estimate_zero3_model_states_mem_needs`
  and stage 1-2's `estimate_zero2_model_states_mem_needs`, which the `..._all_cold` tables print)
  for DeepSpeed; plain PyTorch keeps weights, gradients and both AdamW moments in `llm.dtype`
  (4 x its bytes per trained parameter; a frozen one: its weight only); LoRA (`sft.trainable:
  lora`) trains r x (in + out) per target layer plus the new id rows, in fp32 (peft's adapters).
  The id rows added by ET (`<uid>`/`<iid>`, n_users + n_items; untied backbones also grow their
  output layer) count as parameters.
- activations per GPU, for the micro batch at the preset's prompt length (`llm.max_prompt_tokens`,
  an upper bound), per decoder layer and token: d (8h + 2 h_kv + 4 i) + 4h bytes (d = bytes of the
  activation dtype, h hidden, h_kv the key/value width, i the MLP width; the 4h: the fp32 input
  RMSNorm keeps when d < 4); no s x s attention scores (SDPA's fused kernels). The coefficients
  are what autograd saves in a Llama layer of transformers (measured on a tiny model by
  tests/test_plan.py). With `sft.gradient_checkpointing` a layer keeps its input (d h) and one
  layer's full activations are live at a time.
- a run fits when its total is at most 90% of `--gpu-memory` GiB (the rest: CUDA context,
  allocator fragmentation, temporaries).
- wall time: training FLOPs per token 6 N + 12 L h s (full; N = the decoder layers' parameters,
  which every token passes through; the LM head runs on answer tokens only), 4 N + 8 L h s with a
  frozen base (LoRA: no weight gradients), 2 N + 4 L h s for a forward pass, at an MFU that is
  either measured (`--costs`: the JSON the GPU check `benchmarks/bench_gpu_check.py` writes; its
  full-SFT MFU for full training and forward passes, its LoRA MFU for LoRA) or assumed (`--mfu`,
  default 0.40), of `--peak-tflops` (989: bf16 dense on an H100 SXM). Steps and evaluated users
  come from the prepared data's manifest (`bdlm prep` first); every prompt counted at the prompt
  length above, so times are upper bounds. Evaluation: each validation scores its users' top-K
  prompts, the test scores every evaluated user's top-K and binary prompts (binary prompts share
  one prefix pass), both sides of a joint run; under DeepSpeed every rank scores everything.
- scoring: a ZeRO-3 run scores (validation, test) with an unpartitioned copy of the LLM in its
  dtype beside its partitioned states (`JointTrainer.eval_model`); scoring alone (LLM-Rec) holds
  the weights and one batch's live tensors (text-only top-K: one prompt's KV cache, repeated for
  the candidates).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

GIB = 2 ** 30
HEADROOM = 0.9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
REPO = Path(__file__).resolve().parent.parent
ZERO3 = "params/deepspeed/zero3.json"


class PlanError(ValueError):
    """A backbone or costs file that cannot be read: the message names it."""


# ----------------------------------------------------------------------------- the backbone

@dataclass
class Backbone:
    name: str
    params: int                    # every parameter (tied weights once)
    layer_params: int              # the decoder layers' (N of 6N)
    largest_layer: int             # the largest module's own parameters (DeepSpeed's definition)
    layers: int
    hidden: int
    kv_hidden: int
    intermediate: int
    vocab: int
    tied: bool
    linears: dict = field(default_factory=dict)   # module name -> (in, out) of every nn.Linear


def read_backbone_config(spec: str) -> tuple[str, dict]:
    """(name, config dict) of a config.json path, a model folder or a published config's name."""
    from .llm.tiny import published_config, published_names
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" or path.exists():
        try:
            return path.parent.name if path.name == "config.json" else path.stem, \
                json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PlanError(f"{path}: no such backbone config") from None
        except json.JSONDecodeError as e:
            raise PlanError(f"{path}: not valid JSON ({e})") from None
    if spec in published_names():
        return spec, published_config(spec)
    raise PlanError(f"backbone '{spec}': not a config.json, a model folder or a published config "
                    f"({', '.join(published_names())})")


def describe_backbone(spec: str) -> Backbone:
    """Count the backbone's parameters on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    name, cfg = read_backbone_config(spec)
    cfg = {k: v for k, v in cfg.items() if k not in ("_name_or_path", "transformers_version")}
    try:
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    except (KeyError, ValueError) as e:
        raise PlanError(f"backbone '{spec}': not a config transformers knows ({e})") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    unique = {id(p): p.numel() for p in model.parameters()}
    layers = model.get_decoder().layers if hasattr(model, "get_decoder") else model.model.layers
    layer_ids = {id(p) for p in layers.parameters()}
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    linears = {n: (m.in_features, m.out_features) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)}
    h = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or h // heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads) * head_dim
    tied = model.get_output_embeddings() is None or \
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return Backbone(name, sum(unique.values()), sum(v for k, v in unique.items() if k in layer_ids),
                    largest, len(layers), h, kv, int(config.intermediate_size),
                    int(config.vocab_size), bool(tied), linears)


# ----------------------------------------------------------------------------- memory

def activation_bytes(bb: Backbone, tokens: int, dtype_bytes: int, checkpointing: bool) -> int:
    """What the backward pass needs kept from the forward pass, for `tokens` = micro batch x
    prompt length (module doc: the formula)."""
    d = dtype_bytes
    per_layer = d * (8 * bb.hidden + 2 * bb.kv_hidden + 4 * bb.intermediate) + (4 * bb.hidden if d < 4 else 0)
    if checkpointing:
        return int(tokens * (bb.layers * d * bb.hidden + per_layer))
    return int(tokens * bb.layers * per_layer)


def zero_states(stage: int, params: int, largest: int, gpus: int, offload: str = "none") -> tuple[int, int]:
    """(per-GPU bytes, per-node CPU bytes) of the model states from DeepSpeed's estimators;
    offload = none | optimizer | all (optimizer and parameters, ZeRO-3 only)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    _quiet_deepspeed()
    if stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            params, largest, num_gpus_per_node=gpus, cpu_offload=offload != "none",
            cpu_offload_params=offload == "all", zero_init=True)
        return gpu, cpu
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    cpu, gpu = estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=gpus,
                                                     cpu_offload=offload != "none")
    return gpu, cpu


def _quiet_deepspeed() -> None:
    import logging
    for name in ("DeepSpeed", "deepspeed"):
        logging.getLogger(name).setLevel(logging.ERROR)


def lora_trainable(bb: Backbone, targets, r: int) -> int:
    """LoRA's parameters: r x (in + out) for every linear layer whose name ends in a target."""
    return sum(r * (i + o) for n, (i, o) in bb.linears.items() if n.rsplit(".", 1)[-1] in set(targets))


# ----------------------------------------------------------------------------- one run

@dataclass
class Setup:
    """How one run uses the LLM, and what that costs per GPU."""
    work: str                      # none | score | train
    trainable: str = "full"        # full | top | lora (train)
    engine: str = "plain"          # plain | zero2 | zero3 (train)
    gpus: int = 1                  # GPUs the LLM step is spread over
    offload: str = "none"          # none | optimizer | all
    micro_batch: int = 0
    checkpointing: bool = False


@dataclass
class Memory:
    states: float                  # GiB per GPU
    activations: float
    other: float                   # the domain side, M, P (joint runs)
    cpu: float = 0.0               # GiB of CPU memory per node (offload)
    replica: float = 0.0           # ZeRO: the plain copy validation and testing score with

    @property
    def total(self) -> float:      # training's activations and scoring's replica are not live together
        return self.states + max(self.activations, self.replica) + self.other


def _engine_of(params: Mapping, gpus: int) -> tuple[str, str]:
    """(zero2 | zero3, offload) of a joint run under DeepSpeed: its config, or the paper's."""
    from .joint.distributed import load_ds_config
    cfg = load_ds_config(params["joint"]["deepspeed_config"] or ZERO3)
    z = cfg.get("zero_optimization") or {}
    dev = lambda k: (z.get(k) or {}).get("device", "none")   # noqa: E731
    offload = "all" if dev("offload_param") == "cpu" else "optimizer" if dev("offload_optimizer") == "cpu" else "none"
    return ("zero3" if int(z.get("stage", 0)) == 3 else "zero2"), offload


def setup_of(kind: str, llm_variant: Mapping | None, params: Mapping, gpus: int) -> Setup:
    """How the workbench runs this method's LLM with these params on `gpus` GPUs."""
    sft, j = params["sft"], params["joint"]
    if kind in ("domain", "control"):
        return Setup("none")
    if kind == "gpt4sm" or (kind == "llm" and not llm_variant.get("sft")):
        return Setup("score", micro_batch=int(sft["eval_batch_size"]))
    mode, ckpt = str(sft["trainable"]), bool(sft.get("gradient_checkpointing"))
    if kind == "joint":
        bs = int(j["batch_size"] or sft["batch_size"])
        if mode == "full" and (j["deepspeed_config"] or gpus > 1):
            engine, offload = _engine_of(params, gpus)
            return Setup("train", mode, engine, gpus, offload, math.ceil(bs / gpus), ckpt)
        return Setup("train", mode, micro_batch=bs, checkpointing=ckpt)
    return Setup("train", mode, micro_batch=int(sft["batch_size"]), checkpointing=ckpt)


def memory(bb: Backbone, s: Setup, params: Mapping, n_ids: int, seq: int, joint: bool,
           dims: tuple[int, int] = (0, 0)) -> Memory:
    """Per-GPU memory of one setup (module doc: where each part comes from)."""
    d = DTYPE_BYTES[str(params["llm"]["dtype"])]
    rows = n_ids * bb.hidden * (1 if bb.tied else 2)
    total = bb.params + rows
    n_users_items, dim = dims
    other = (n_users_items * dim * 16 + n_users_items * bb.hidden * 4 + dim * bb.hidden * 16) / GIB if joint else 0.0
    if s.work == "none":
        return Memory(0.0, 0.0, other)
    if s.work == "score":   # weights + scoring's largest live tensors
        if params["llm"]["extend_tokens"]:   # one pass per batch: a layer's temporaries
            live = s.micro_batch * seq * d * (4 * bb.hidden + 2 * bb.intermediate)
        else:   # titles: one prompt's KV cache, repeated for the candidates
            live = seq * 2 * bb.layers * bb.kv_hidden * d * int(params["testset"]["n_candidates"])
        return Memory(total * d / GIB, live / GIB, other)
    act = activation_bytes(bb, s.micro_batch * seq, d, s.checkpointing) / GIB
    if s.engine in ("zero2", "zero3"):
        largest = max(bb.largest_layer, (bb.vocab + n_ids) * bb.hidden)
        gpu, cpu = zero_states(3 if s.engine == "zero3" else 2, total, largest, s.gpus, s.offload)
        replica = total * d / GIB if s.engine == "zero3" else 0.0
        return Memory(gpu / GIB, act, other, cpu / GIB if s.offload != "none" else 0.0, replica)
    if s.trainable == "full":
        return Memory(4 * d * total / GIB, act, other)
    if s.trainable == "lora":
        train = lora_trainable(bb, params["sft"]["lora_targets"], int(params["sft"]["lora_r"])) + rows
        return Memory((total * d + 16 * train) / GIB, act, other)
    # top: the top layers + the id rows (their whole weight: the word rows are masked, not cut)
    per_layer = bb.layer_params / bb.layers
    train = int(params["sft"]["top_layers"]) * per_layer + (bb.vocab + n_ids) * bb.hidden * (1 if bb.tied else 2)
    return Memory((total * d + 3 * d * train) / GIB, act, other)


# ----------------------------------------------------------------------------- time

def flops_per_token(bb: Backbone, seq: int, kind: str) -> float:
    """train_full | train_frozen | forward (module doc)."""
    n, attn = bb.layer_params, bb.layers * bb.hidden * seq
    return {"train_full": 6 * n + 12 * attn, "train_frozen": 4 * n + 8 * attn, "forward": 2 * n + 4 * attn}[kind]


def read_costs(path) -> dict:
    """The GPU check's measured MFUs: {"full": x, "lora": y, "source": ...}."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        rates = {"full": float(data["full_sft"]["mfu"]), "lora": float(data["lora"]["mfu"]),
                 "source": f"measured on {data.get('device', 'a GPU')} ({path})"}
        if not (0 < rates["full"] <= 1 and 0 < rates["lora"] <= 1):
            raise ValueError(f"MFU {rates['full']} / {rates['lora']} is not in (0, 1]")
        return rates
    except FileNotFoundError:
        raise PlanError(f"{path}: no such costs file (benchmarks/bench_gpu_check.py writes it)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise PlanError(f"{path}: not a GPU check result ({type(e).__name__}: {e})") from None


@dataclass
class Counts:
    """From the prepared data: users, items, SFT samples (per the run's params)."""
    users: int
    items: int

    def samples(self, params: Mapping) -> int:
        sft, llm = params["sft"], params["llm"]
        users = min(self.users, int(sft["max_train_users"] or self.users))
        per = {"topk": 1, "binary": 2, "both": 3}[str(llm["task"])]
        n = users * int(sft["positions_per_user"]) * per
        if str(sft.get("aux_tasks") or "none") != "none":
            n += int(round(n * float(sft["aux_ratio"])))
        return n

    def eval_users(self, params: Mapping) -> int:
        e = params["eval"]
        return min(self.users, int(e.get("topk_users") or e["max_users"] or self.users))


def read_counts(params: Mapping) -> Counts | None:
    """Users and items of the prepared data (None when it is not prepared yet)."""
    from .data.dataset import dataset_dir
    from .runs import read_json
    man = dataset_dir(params) / "manifest.json"
    if not man.exists():
        return None
    stats = read_json(man).get("stats") or {}
    return Counts(int(stats["users"]), int(stats["items"]))


def run_seconds(bb: Backbone, s: Setup, kind: str, llm_variant, params: Mapping, c: Counts | None,
                seq: int, peak: float, mfu: Mapping) -> tuple[int | None, float | None]:
    """(training steps, seconds) of one run's LLM work; (None, None) without counts."""
    if s.work == "none" or c is None:
        return None, None
    rate = peak * 1e12
    fwd = flops_per_token(bb, seq, "forward") / (rate * mfu["full"])
    users = c.eval_users(params)
    if kind == "gpt4sm":   # one pass over the item titles (short)
        return 0, c.items * 32 * fwd
    test = users * 2 * seq * fwd
    if s.work == "score":
        return 0, test
    sft, j = params["sft"], params["joint"]
    kind_flops = "train_full" if s.trainable == "full" else "train_frozen"
    step_rate = rate * (mfu["lora"] if s.trainable == "lora" else mfu["full"]) * (s.gpus if s.engine != "plain" else 1)
    n = c.samples(params)
    if kind == "llm":
        bs, accum = int(sft["batch_size"]), int(sft["grad_accum"])
        steps = (math.ceil(n / bs) * int(sft["epochs"])) // accum
        steps = min(steps, int(sft["max_steps"])) if sft.get("max_steps") is not None else steps
        per_step = bs * accum * seq * flops_per_token(bb, seq, kind_flops) / step_rate
        return steps, steps * per_step + test
    bs = int(j["batch_size"] or sft["batch_size"])
    per_epoch = math.ceil(n / bs)
    steps = per_epoch * int(j["epochs"])
    steps = min(steps, int(j["max_steps"])) if j.get("max_steps") is not None else steps
    per_step = bs * seq * flops_per_token(bb, seq, kind_flops) / step_rate
    frozen = 0.0 if j["joint"] else steps * bs * seq * fwd        # w/o JL: the domain phase's passes
    every = int(j.get("eval_every") or per_epoch)
    valid_users = min(c.users, int(j.get("valid_users") or params["eval"]["max_users"] or c.users))
    valid = math.ceil(steps / every) * valid_users * seq * fwd
    return steps, steps * per_step + frozen + valid + 2 * test


# ----------------------------------------------------------------------------- the plan

@dataclass
class RunPlan:
    run_id: str
    method: str
    kind: str
    setup: Setup
    mem: Memory
    steps: int | None
    seconds: float | None
    fits: bool
    options: list = field(default_factory=list)    # (what to change, Memory) that would fit
    notes: list = field(default_factory=list)


@dataclass
class Plan:
    batch: str
    backbone: Backbone
    gpus: int
    gpu_gib: float
    n_ids: int | None
    seq: int
    time_basis: str
    runs: list

    @property
    def usable(self) -> float:
        return HEADROOM * self.gpu_gib


def _describe_setup(s: Setup) -> str:
    if s.work == "none":
        return "domain model only"
    if s.work == "score":
        return "scoring only (weights)"
    how = {"plain": "plain PyTorch, 1 GPU", "zero2": f"ZeRO-2 x{s.gpus}", "zero3": f"ZeRO-3 x{s.gpus}"}[s.engine]
    if s.offload != "none":
        how += f" offload {s.offload}"
    return f"{s.trainable} SFT, {how}, micro batch {s.micro_batch}" + (", grad. ckpt" if s.checkpointing else "")


def _options(bb, s: Setup, kind, params, n_ids, seq, usable, gpus, dims) -> list:
    """What would make a training run fit, one line per kind of change, cheapest first: gradient
    checkpointing; more GPUs (the fewest that fit); ZeRO-3 offloading the optimizer, then the
    parameters too; LoRA (plain, one GPU). Each alone, else with checkpointing; a change that keeps
    full SFT in plain 16-bit PyTorch (module doc: lossy) comes last."""
    from dataclasses import replace
    joint = kind == "joint"
    bs = s.micro_batch * (s.gpus if s.engine != "plain" else 1)
    cks = [False, True] if not s.checkpointing else [True]
    families = []
    if not s.checkpointing:
        families.append([("sft.gradient_checkpointing=true", replace(s, checkpointing=True))])
    if joint and s.trainable == "full":
        families.append([(f"{n} GPUs, ZeRO-3", Setup("train", "full", "zero3", n, "none", math.ceil(bs / n), ck))
                         for n in (2, 4, 8, 16, 32, 64) if n > gpus for ck in cks])
        for off in ("optimizer", "all"):
            families.append([(f"ZeRO-3 offloading {'the optimizer' if off == 'optimizer' else 'optimizer and parameters'}"
                              f" to CPU on {gpus} GPU{'s' if gpus > 1 else ''}",
                              Setup("train", "full", "zero3", gpus, off, math.ceil(bs / gpus), ck)) for ck in cks])
    if s.trainable != "lora":
        families.append([("sft.trainable=lora, plain PyTorch on 1 GPU", Setup("train", "lora", "plain", 1, "none", bs, ck))
                         for ck in cks])
    out = []
    for fam in families:
        for what, t in fam:
            m = memory(bb, t, params, n_ids, seq, joint, dims)
            if m.total <= usable:
                ck = " + sft.gradient_checkpointing=true" if t.checkpointing and not s.checkpointing \
                    and not what.startswith("sft.gradient") else ""
                lossy = t.engine == "plain" and t.trainable == "full" and params["llm"]["dtype"] != "float32"
                out.append((lossy, what + ck + (f" (in {params['llm']['dtype']}: see the note)" if lossy else ""), m))
                break
    return [(what, m) for _, what, m in sorted(out, key=lambda x: x[0])]   # sound changes first


def plan_batch(batch_yaml, backbone: str, gpus: int = 1, gpu_gib: float = 80.0, mfu: float = 0.40,
               costs=None, peak_tflops: float = 989.0, overrides: Mapping | None = None,
               output_dir=None) -> Plan:
    """The plan of every LLM or domain run of `batch_yaml` with `backbone` on `gpus` GPUs."""
    from . import methods as methods_table
    from .experiments.batch import expand_batch
    from .params import load_params
    if gpus < 1:
        raise PlanError(f"--gpus {gpus}: at least 1")
    bb = describe_backbone(backbone)
    batch = expand_batch(batch_yaml, output_dir=output_dir)
    if costs is not None:
        rates = read_costs(costs)
        basis = f"MFU {rates['full']:.0%} full / {rates['lora']:.0%} LoRA, {rates['source']}"
    else:
        rates = {"full": mfu, "lora": mfu}
        basis = f"assumed MFU {mfu:.0%} (no measured step costs: --costs)"
    basis += f", of {peak_tflops:g} TFLOP/s per GPU"
    usable = HEADROOM * gpu_gib
    plans, seq, n_ids_seen = [], 0, None
    for r in batch.runs:
        m = methods_table.METHODS.get(r.method)
        if m is None:      # a notebook step (data prep, report): no training
            continue
        p = load_params(r.dataset, batch.preset, {**r.overrides, "seed": r.seed,
                                                  "output_dir": str(batch.output_dir),
                                                  "data_dir": r.params.get("data_dir"),
                                                  **dict(overrides or {})})
        counts = read_counts(p)
        n_ids = (counts.users + counts.items) if counts is not None and p["llm"]["extend_tokens"] else 0
        if counts is not None and p["llm"]["extend_tokens"]:
            n_ids_seen = n_ids
        seq = int(p["llm"]["max_prompt_tokens"])
        s = setup_of(m.kind, m.llm, p, gpus)
        dims = ((counts.users + counts.items) if counts else 0, int(p["domain"]["dim"]))
        mem = memory(bb, s, p, n_ids, seq, m.kind == "joint", dims)
        steps, secs = run_seconds(bb, s, m.kind, m.llm, p, counts, seq, peak_tflops, rates)
        rp = RunPlan(r.run_id, r.method, m.kind, s, mem, steps, secs, mem.total <= usable)
        if not rp.fits and s.work == "train":
            rp.options = _options(bb, s, m.kind, p, n_ids, seq, usable, gpus, dims)
        if s.work != "none" and counts is None:
            rp.notes.append(f"data not prepared (bdlm prep --dataset {r.dataset} --preset {batch.preset}): "
                            "no id rows counted, no steps or time")
        if s.work == "train" and s.engine == "plain" and s.trainable == "full" and p["llm"]["dtype"] != "float32":
            rp.notes.append(f"full SFT in plain PyTorch keeps {p['llm']['dtype']} weights and AdamW moments, "
                            f"no fp32 master copy: steps of lr {float(p['sft']['lr']):g} mostly round away "
                            "(DeepSpeed keeps fp32 master weights)")
        if m.kind == "joint" and gpus > 1 and s.engine == "plain":
            rp.notes.append("DeepSpeed needs sft.trainable=full: this run uses one GPU")
        if m.kind == "llm" and gpus > 1 and s.work == "train":
            rp.notes.append("SFT runs have no multi-GPU path: one GPU")
        plans.append(rp)
    return Plan(str(batch_yaml), bb, gpus, gpu_gib, n_ids_seen, seq, basis, plans)


def _gib(x: float) -> str:
    return f"{x:.1f}"


def format_plan(plan: Plan) -> str:
    """The plan as a table, the runs that do not fit with what would, and a one-line verdict."""
    bb = plan.backbone
    ids = f"+{plan.n_ids} id rows" if plan.n_ids else "no id rows counted"
    lines = [f"plan: {plan.batch}",
             f"backbone {bb.name}: {bb.params / 1e9:.2f}B parameters ({bb.layers} layers, hidden {bb.hidden}, "
             f"{'tied' if bb.tied else 'untied'} embeddings; {ids}); prompts <= {plan.seq} tokens",
             f"GPUs: {plan.gpus} x {plan.gpu_gib:g} GiB, fits = total <= {plan.usable:.0f} GiB; "
             f"time: {plan.time_basis}", ""]
    head = (f"{'run':<24} {'LLM work':<50} {'states':>6} {'activ.':>6} {'replica':>7} {'other':>5} {'total':>6}"
            f"  {'fits':<4} {'steps':>6} {'hours':>5}")
    lines += [head, "-" * len(head)]
    for r in plan.runs:
        hours = "-" if r.seconds is None else f"{r.seconds / 3600:.2f}"
        steps = "-" if r.steps is None else str(r.steps)
        rep = _gib(r.mem.replica) if r.mem.replica else "-"
        lines.append(f"{r.run_id:<24} {_describe_setup(r.setup):<50} {_gib(r.mem.states):>6} "
                     f"{_gib(r.mem.activations):>6} {rep:>7} {_gib(r.mem.other):>5} {_gib(r.mem.total):>6}  "
                     f"{'yes' if r.fits else 'NO':<4} {steps:>6} {hours:>5}")
    lines.append("(GiB per GPU. states: weights, gradients, optimiser; activ.: the micro batch's activations "
                 "(scoring: its live tensors); replica: the unpartitioned copy ZeRO-3 runs score with, "
                 "not live with the activations; other: the domain side and M)")
    fit = [r for r in plan.runs if r.fits]
    total_h = sum(r.seconds for r in fit if r.seconds is not None) / 3600
    lines.append(f"runs that fit: {len(fit)} of {len(plan.runs)}; their LLM work: {total_h:.1f} h "
                 "(upper bound; domain runs not timed)")
    notes = {}
    for r in plan.runs:
        for n in r.notes:
            notes.setdefault(n, []).append(r.run_id)
    for n, ids_ in notes.items():
        lines.append(f"note ({len(ids_)} runs): {n}")
    bad = [r for r in plan.runs if not r.fits]
    if bad:
        lines.append("")
        lines.append("do not fit, and what would (GiB per GPU):")
        groups: dict = {}
        for r in bad:
            key = (_describe_setup(r.setup), round(r.mem.total, 1), tuple(w for w, _ in r.options))
            groups.setdefault(key, []).append(r)
        for (desc, total, _), rs in groups.items():
            ex = rs[0]
            lines.append(f"- {', '.join(x.run_id for x in rs)}: {desc} needs {total:.1f} > {plan.usable:.0f}")
            for what, m in ex.options or []:
                cpu = f", {m.cpu:.0f} GiB CPU memory" if m.cpu else ""
                lines.append(f"    {what}: {m.total:.1f}{cpu}")
            if not ex.options:
                lines.append("    nothing tried fits")
    return "\n".join(lines)


def verdict(plan: Plan) -> str | None:
    """One line when the plan cannot run as given (None when every run fits)."""
    bad = [r for r in plan.runs if not r.fits]
    if not bad:
        return None
    worst = max(bad, key=lambda r: r.mem.total)
    fix = worst.options[0][0] if worst.options else "a smaller backbone"
    return (f"{len(bad)} of {len(plan.runs)} runs do not fit on {plan.gpus} x {plan.gpu_gib:g} GiB: "
            f"{worst.run_id} ({_describe_setup(worst.setup)}, {plan.backbone.params / 1e9:.1f}B) needs "
            f"{worst.mem.total:.1f} GiB per GPU > {plan.usable:.0f}; would fit with {fix}")
