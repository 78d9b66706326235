"""What the joint trainer needs from the LLM in one forward pass: the SFT loss (Eq. 4) and the
top-layer hidden states at the items' tokens (h_L of Eq. 5), plus the id rows E_U^L, E_I^L (Eq. 7).

Prompts are right-padded, so the token positions recorded by `PromptBuilder` stay valid; the model
is causal, so appending the answer does not change the hidden states at prompt positions: h_L read
from the SFT forward pass equals h_L from a prompt-only pass (what the cascade uses at test time).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ..llm.batching import collate, lm_forward


def forward_prompts(model, prompts, pad_id: int, with_answer: bool = True):
    """One forward pass (`llm.sft.lm_forward`): (SFT loss or None, LMOutput with item_hidden)."""
    batch = collate(prompts, pad_id, with_answer)
    out = lm_forward(model, batch, need_items=True)
    return out.loss, out


def item_mentions(prompts, which: str = "all"):
    """(prompt rows, mention columns, users, items) of the batch's item mentions, in prompt order.
    which = "all" (every mention) or "candidates" (top-K candidates and binary targets)."""
    rows, cols, users, items = [], [], [], []
    for r, p in enumerate(prompts):
        for m, (it, role) in enumerate(zip(p.items, p.item_roles)):
            if which == "all" or role in ("candidate", "target"):
                rows.append(r)
                cols.append(m)
                users.append(p.user)
                items.append(int(it))
    return rows, cols, np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)


def item_hidden(out, prompts, which: str = "all"):
    """(users, items, h_L [N, h]) at the items' token positions (`item_mentions`), detached (Eq. 5:
    no gradient into the LLM from the domain loss)."""
    rows, cols, users, items = item_mentions(prompts, which)
    h = out.item_hidden.detach()[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)]
    return users, items, h.float()


def prompt_ids(prompts) -> tuple[np.ndarray, np.ndarray]:
    """The batch's users and items (history, candidates, target), each once, sorted."""
    users = np.unique(np.array([p.user for p in prompts], dtype=np.int64))
    items = np.unique(np.concatenate([np.asarray(p.items, dtype=np.int64) for p in prompts]))
    return users, items


def _ids(token_map, users, items, device):
    u = torch.as_tensor(token_map.user_start + np.asarray(users), dtype=torch.long, device=device)
    i = torch.as_tensor(token_map.item_start + np.asarray(items), dtype=torch.long, device=device)
    return u, i


def id_rows(model, token_map, users, items):
    """E_U^L[users], E_I^L[items]: the `<uid>`/`<iid>` rows of the input embedding (with grad).

    Read by CALLING the embedding module, not by indexing its weight: under DeepSpeed ZeRO-3 the
    weight is partitioned and only a module call gathers it."""
    emb = model.get_input_embeddings()
    u, i = _ids(token_map, users, items, emb.weight.device)
    return emb(u).float(), emb(i).float()


@contextmanager
def gathered(params):
    """Full parameters inside the block under ZeRO-3 (a no-op for ordinary tensors)."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def id_tables(model, token_map, device="cpu"):
    """The full E_U^L, E_I^L tables (detached copies, on `device`)."""
    w = model.get_input_embeddings().weight
    tm = token_map
    with gathered([w]):
        wd = w.detach()
        return (wd[tm.user_start:tm.user_start + tm.n_users].float().to(device, copy=True),
                wd[tm.item_start:tm.item_start + tm.n_items].float().to(device, copy=True))


class JointLLM(nn.Module):
    """The LLM step's forward as one module (what DeepSpeed wraps): the SFT forward pass
    (`lm_forward`: loss, h_L at the items) and the batch's id rows for L_ML^L."""

    def __init__(self, llm, token_map=None):
        super().__init__()
        self.llm, self.tm = llm, token_map

    def forward(self, batch, users=None, items=None):
        out = lm_forward(self.llm, batch, need_items=True)
        ru = ri = None
        if self.tm is not None and users is not None:
            ru, ri = id_rows(self.llm, self.tm, users, items)
        return out, ru, ri
