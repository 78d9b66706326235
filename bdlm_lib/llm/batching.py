"""The LLM side's shared batching: prompts padded into tensors (`collate`), the one forward pass
every consumer builds on (`lm_forward`: answer-token loss, answer-position logits, h_L at the item
positions), length-sorted batches, the seeded epoch schedule and the per-candidate score layout.
SFT, scoring, the joint trainer and the baselines all read these, so none reaches into another's
private helpers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .prompts import Prompt


def collate(prompts: Sequence[Prompt], pad_id: int, with_answer: bool = True) -> dict:
    """Right-padded batch. Keys: input_ids, attention_mask, position_ids, labels (-100 outside the
    answer), answer_pos [B] (index predicting the first answer token), item_pos/item_ids [B, M]
    (-1 padded), users [B], targets [B], label [B]."""
    seqs = [list(p.input_ids) + (list(p.answer_ids) if with_answer else []) for p in prompts]
    B, T = len(seqs), max(len(s) for s in seqs)
    M = max(1, max(len(p.items) for p in prompts))
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    item_pos = torch.full((B, M), -1, dtype=torch.long)
    item_ids = torch.full((B, M), -1, dtype=torch.long)
    for b, (p, s) in enumerate(zip(prompts, seqs)):
        ids[b, :len(s)] = torch.tensor(s)
        mask[b, :len(s)] = 1
        if with_answer and p.answer_ids:
            n = len(p.input_ids)
            labels[b, n:len(s)] = torch.tensor(p.answer_ids)
        item_pos[b, :len(p.items)] = torch.as_tensor(p.item_positions)
        item_ids[b, :len(p.items)] = torch.as_tensor(p.items)
    return {"input_ids": ids, "attention_mask": mask,
            "position_ids": (mask.cumsum(1) - 1).clamp_min(0),
            "labels": labels,
            "answer_pos": torch.tensor([len(p.input_ids) - 1 for p in prompts]),
            "item_pos": item_pos, "item_ids": item_ids,
            "users": torch.tensor([p.user for p in prompts]),
            "targets": torch.tensor([p.target for p in prompts]),
            "label": torch.tensor([p.label for p in prompts])}


@dataclass
class LMOutput:
    loss: torch.Tensor | None           # mean CE over answer tokens (None without labels)
    answer_logits: torch.Tensor         # [B, V] next-token logits at answer_pos
    answer_hidden: torch.Tensor         # [B, h] h_L at answer_pos
    item_hidden: torch.Tensor | None    # [B, M, h] h_L at item_pos (zeros where item_pos == -1)
    hidden: torch.Tensor                # [B, T, h] last-layer hidden states


def body(model):
    """The transformer body (without the LM head) of a causal LM."""
    dec = model.get_decoder() if hasattr(model, "get_decoder") else None
    return dec if dec is not None else model.model


def lm_forward(model, batch: Mapping, need_items: bool = True) -> LMOutput:
    """One forward pass: answer-token loss, answer-position logits, h_L at the item positions.

    Position ids come from the attention mask, so left- and right-padded batches give the same
    numbers as unpadded sequences. Gradients flow into everything returned; a joint trainer that
    wants "no gradient into the LLM from L_D" detaches `item_hidden` itself.
    """
    dev = model.get_input_embeddings().weight.device
    ids = batch["input_ids"].to(dev)
    mask = batch["attention_mask"].to(dev)
    pos = batch.get("position_ids")
    pos = (mask.cumsum(1) - 1).clamp_min(0) if pos is None else pos.to(dev)
    hid = body(model)(input_ids=ids, attention_mask=mask, position_ids=pos,
                      use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    rows = torch.arange(ids.shape[0], device=dev)
    ans_pos = batch["answer_pos"].to(dev)
    ans_h = hid[rows, ans_pos]
    ans_logits = head(ans_h)
    loss = None
    labels = batch.get("labels")
    if labels is not None:
        labels = labels.to(dev)
        tgt = labels[:, 1:]
        sel = tgt != -100
        if sel.any():
            logits = head(hid[:, :-1][sel]).float()  # only the rows that predict answer tokens
            loss = F.cross_entropy(logits, tgt[sel])
    item_h = None
    if need_items and "item_pos" in batch:
        ip = batch["item_pos"].to(dev)
        item_h = hid[rows.unsqueeze(1), ip.clamp_min(0)] * (ip >= 0).unsqueeze(-1).to(hid.dtype)
    return LMOutput(loss, ans_logits, ans_h, item_h, hid)


def length_batches(prompts: Sequence[Prompt], batch_size: int):
    """Index batches over prompts sorted by length (less padding); callers un-sort by index."""
    order = np.argsort([len(p.input_ids) for p in prompts], kind="stable")
    for s in range(0, len(order), batch_size):
        yield order[s:s + batch_size]


def pad_id(tok) -> int:
    """The tokenizer's padding id (its end-of-sequence id where it has none)."""
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def progress_bar(it, total, desc, progress):
    """A tqdm bar over `it`, or none when `progress` is false."""
    from tqdm.auto import tqdm
    return tqdm(it, total=total, desc=desc, disable=not progress, leave=False)


def fill_scores(frame: pd.DataFrame, prompts: Sequence[Prompt], scores: Sequence[np.ndarray]) -> np.ndarray:
    """Per-prompt candidate scores laid out as one score per row of `frame` (its users' rows)."""
    out = np.full(len(frame), np.nan)
    groups = frame.groupby("user", sort=False).indices
    for p, s in zip(prompts, scores):
        out[groups[p.user]] = s
    return out


def epoch_schedule(n: int, batch: int, epochs: int, seed: int) -> list[list[int]]:
    """Micro-batches of sample indices, a fresh seeded permutation per epoch (resume-stable)."""
    out = []
    for ep in range(epochs):
        perm = np.random.default_rng(seed + ep).permutation(n)
        out += [perm[s:s + batch].tolist() for s in range(0, n, batch)]
    return out
