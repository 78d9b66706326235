"""Supervised fine-tuning on the recommendation prompts (paper Eq. 3-4) and the batched forward
pass the joint trainer builds on.

`collate` pads a list of `Prompt`s (right padding, explicit position ids) into tensors with
labels = -100 everywhere except the answer tokens. `lm_forward` runs the transformer body once and
returns the answer-token loss, the next-token logits at the answer position and the last-layer
hidden states h_L at every item position (what the joint trainer concatenates with f_D).
The vocabulary projection is applied only to the rows that need it (label positions), so the
[B, T, V] logit tensor is never built.

`sft_train` trainable modes (params.sft.trainable):
- full: every parameter.
- top:  the top `sft.top_layers` transformer layers + final norm + the NEW token rows of the
        embedding (and of the output layer when untied); the word rows are frozen by a gradient
        mask hook on the weight (which gets no weight decay, so frozen rows really do not move).
- lora: peft LoRA adapters on `sft.lora_targets` + the new token rows as peft trainable tokens
        (`llm.lora`); merged into the model at the end, so callers keep one plain model object.
Gradient checkpointing and bf16 autocast follow params (`llm.efficiency`).
"""
from __future__ import annotations

import math
import random
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..curves import Curves
from .batching import body, collate, epoch_schedule, lm_forward
from .efficiency import autocast, gradient_checkpointing
from .lora import add_lora, is_tied, merge_lora
from .prompts import Prompt


# ----------------------------------------------------------------------------- trainable set

def new_token_start(tokenizer) -> int | None:
    """First id of the extended tokens (<uid_0> or <iid_0>), None when there are none."""
    starts = []
    for t in ("<uid_0>", "<iid_0>"):
        i = tokenizer.convert_tokens_to_ids(t)
        if i is not None and i != tokenizer.unk_token_id:
            starts.append(i)
    return min(starts) if starts else None


def _row_mask_hook(weight: torch.nn.Parameter, start: int):
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[start:] = 1
    return weight.register_hook(lambda g: g * mask)


def _cut_prompt_input(_layer, args, kwargs):
    """Forward pre-hook of the first decoder layer: the prompt's embeddings enter the layer stack
    detached, so the LM loss's backward stops at the trainable layers. Cut here and not on the
    embedding module, whose other callers (L_ML reading the id rows, `joint.llm_io.id_rows`) need
    their gradient."""
    if args:
        return (args[0].detach(), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}


def setup_trainable(model, tokenizer, params: Mapping):
    """Set requires_grad for sft.trainable; return (param_groups, hooks, info)."""
    sft = params["sft"]
    mode = sft["trainable"]
    emb = model.get_input_embeddings().weight
    out_w = None if is_tied(model) else model.get_output_embeddings().weight
    start = new_token_start(tokenizer)
    hooks = []
    rows: list = []   # the parameters holding the new token rows: no weight decay
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif mode in ("top", "lora"):
        for p in model.parameters():
            p.requires_grad_(False)
        if mode == "top":
            dec = body(model)
            k = int(sft["top_layers"])
            for layer in list(dec.layers)[-k:] if k > 0 else []:
                for p in layer.parameters():
                    p.requires_grad_(True)
            for p in dec.norm.parameters():
                p.requires_grad_(True)
            if start is not None:  # the new rows of the embedding (and of an untied output layer)
                for w in [emb] + ([out_w] if out_w is not None else []):
                    w.requires_grad_(True)
                    hooks.append(_row_mask_hook(w, start))
                    rows.append(w)
        else:   # in place: callers keep the same model object
            add_lora(model, params, None if start is None else range(start, len(tokenizer)))
            rows = [p for n, p in model.named_parameters() if "trainable_tokens_delta" in n]
        if start is not None:
            if not sft["rows_from_context"]:
                # the rows learn through the output layer (tied) and L_ML only: with the input
                # side cut, the backward pass stops at the top layers (about half a step on CPU)
                hooks.append(body(model).layers[0].register_forward_pre_hook(
                    _cut_prompt_input, with_kwargs=True))
    else:
        raise ValueError(f"sft.trainable must be full, top or lora, got {mode!r}")
    wd = float(sft["weight_decay"])
    if mode == "full":
        rows = [emb]
    rows = [p for p in rows if p.requires_grad]
    decay = [p for p in model.parameters() if p.requires_grad and not any(p is r for r in rows)]
    groups = [{"params": decay, "weight_decay": wd}]
    if rows:  # no weight decay: masked (frozen) word rows must not shrink
        groups.append({"params": rows, "weight_decay": 0.0})
    n_train = sum(p.numel() for g in groups for p in g["params"])
    if mode == "top" and start is not None:
        n_train -= start * sum(w.shape[1] for w in rows)  # masked word rows do not count
    return groups, hooks, {"mode": mode, "trainable_params": int(n_train), "new_token_start": start}


# ----------------------------------------------------------------------------- checkpoints

def _trainable_state(model) -> dict:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(ckpt_dir: Path, step: int, model, opt, sched) -> None:
    from safetensors.torch import save_file
    from ..runs import atomic_dir, write_json
    with atomic_dir(ckpt_dir / f"step-{step:06d}") as tmp:
        save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "torch_rng": torch.get_rng_state()}, tmp / "state.pt")
        write_json(tmp / "step.json", {"step": step})


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(p for p in ckpt_dir.glob("step-*") if (p / "step.json").exists()) if ckpt_dir.is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: Path, model, opt, sched) -> int:
    from safetensors.torch import load_file
    from ..runs import read_json
    state = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
    rest = torch.load(path / "state.pt", weights_only=True)  # never unpickle arbitrary objects
    opt.load_state_dict(rest["optimizer"])
    sched.load_state_dict(rest["scheduler"])
    torch.set_rng_state(rest["torch_rng"])
    return int(read_json(path / "step.json")["step"])


# ----------------------------------------------------------------------------- training

def sft_train(model, tokenizer, samples: Sequence[Prompt], params: Mapping, run_dir=None,
              progress: bool = True, resume: bool = True, merge: bool = True) -> dict:
    """Fine-tune `model` in place on `samples` (loss on answer tokens only); return the history.

    AdamW, lr sft.lr, cosine schedule with sft.warmup_ratio warm-up (transformers'
    get_cosine_schedule_with_warmup), gradient accumulation sft.grad_accum, gradient clipping at
    sft.max_grad_norm, bf16 autocast on a GPU (sft.bf16_autocast), gradient checkpointing
    (sft.gradient_checkpointing). Steps = min(sft.max_steps, epochs × batches). LoRA is merged at
    the end (`merge=False` leaves the model wrapped, the adapters inspectable: `lora.merge_lora`).
    With `run_dir` and sft.checkpoint_every, a checkpoint (trainable weights, optimizer, scheduler,
    RNG) is written every N steps under run_dir/checkpoints and training resumes from the latest
    one; the data order depends only on (seed, step), so a resumed run ends with the same weights.
    """
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup
    sft = params["sft"]
    if not samples:
        raise ValueError("sft_train: no training samples")
    seed = int(params["seed"])
    torch.manual_seed(seed)
    random.seed(seed)
    bs, accum = int(sft["batch_size"]), int(sft["grad_accum"])
    micro = epoch_schedule(len(samples), bs, int(sft["epochs"]), seed)
    total = len(micro) // accum
    if sft.get("max_steps") is not None:
        total = min(total, int(sft["max_steps"]))
    if total < 1:
        raise ValueError(f"sft_train: {len(samples)} samples give no full step "
                         f"(batch_size {bs} x grad_accum {accum})")
    groups, hooks, info = setup_trainable(model, tokenizer, params)
    opt = torch.optim.AdamW(groups, lr=float(sft["lr"]))
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(float(sft["warmup_ratio"]) * total), total)
    dev = model.get_input_embeddings().weight.device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ckpt_every = sft.get("checkpoint_every")
    ckpt_dir = Path(run_dir) / "checkpoints" if run_dir is not None else None
    start, resumed = 0, None
    if resume and ckpt_dir is not None and (last := latest_checkpoint(ckpt_dir)) is not None:
        start = load_checkpoint(last, model, opt, sched)
        resumed = str(last)
    hist = {"step": [], "loss": [], "lr": [], "resumed_from": resumed, **info,
            "n_samples": len(samples), "total_steps": total}
    model.train()
    t0 = time.perf_counter()
    log_every = int(sft.get("log_every") or 1)
    bar = tqdm(total=total, initial=start, desc=f"SFT ({info['mode']})", disable=not progress)
    modes = ExitStack()   # gradient checkpointing, the run folder's curves (TensorBoard) while the loop runs
    try:
        modes.enter_context(gradient_checkpointing(model, params))
        curves = modes.enter_context(Curves(run_dir))
        curves.open(purge_step=start + 1)
        for step in range(start, total):
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for mb in micro[step * accum:(step + 1) * accum]:
                batch = collate([samples[i] for i in mb], pad)
                with autocast(dev, params):
                    out = lm_forward(model, batch, need_items=False)
                (out.loss / accum).backward()
                step_loss += float(out.loss.detach()) / accum
            trainable = [p for g in groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(trainable, float(sft["max_grad_norm"]))
            opt.step()
            sched.step()
            if (step + 1) % log_every == 0 or step + 1 == total:
                hist["step"].append(step + 1)
                hist["loss"].append(step_loss)
                hist["lr"].append(sched.get_last_lr()[0])
                curves.scalars(step + 1, {"loss": step_loss, "lr": hist["lr"][-1]})
            bar.set_postfix(loss=f"{step_loss:.4f}")
            bar.update(1)
            if ckpt_dir is not None and ckpt_every and (step + 1) % int(ckpt_every) == 0 and step + 1 < total:
                save_checkpoint(ckpt_dir, step + 1, model, opt, sched)
    finally:
        modes.close()
        bar.close()
        for h in hooks:
            h.remove()
        model.eval()
    if info["mode"] == "lora" and merge:
        merge_lora(model)
    for p in model.parameters():
        p.requires_grad_(False)
    hist["seconds"] = round(time.perf_counter() - t0, 2)
    if run_dir is not None:
        from ..runs import write_json
        write_json(Path(run_dir) / "history.json", hist)
    return hist
