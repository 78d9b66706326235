"""Sequence recommenders: SASRec (Kang & McAuley 2018), GRU4Rec (Hidasi et al. 2016),
BERT4Rec (Sun et al. 2019).

Each has an item table E_I^D and represents a user by encoding the last `max_seq_len` items of
their train history (E_U^D = those encodings, so it has grad through the encoder); logits are
<h_u, e_i> and f_D(u, i) = h_u ⊙ e_i. SASRec and GRU4Rec train next-item on every position of
the users' train windows, BERT4Rec with cloze masking (`mask_prob`); all three against negatives
sampled from items the user has not touched (BPR or BCE, `params.domain.loss`).

Sequences are left-padded, so the last position is always the most recent item, and positions
(SASRec, BERT4Rec) line up between training windows and the inference history.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import SequenceModel, as_long


class _Transformer(nn.Module):
    """Pre-LN transformer blocks with a boolean attention mask (True = may attend)."""

    def __init__(self, dim: int, n_layers: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=dim, dropout=dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        # additive float mask per head; the diagonal is always allowed so that padded queries
        # (whose keys are all padding) do not produce NaN rows
        L = x.shape[1]
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=x.device)
        mask = torch.zeros(allowed.shape, device=x.device).masked_fill(~allowed, float("-inf"))
        mask = mask.repeat_interleave(self.n_heads, dim=0)
        for blk in self.blocks:
            x = blk(x, src_mask=mask)
        return self.norm(x)


class SASRec(SequenceModel):
    name = "sasrec"
    causal = True

    def __init__(self, n_users, n_items, dim, sequences=None, max_seq_len=50, n_layers=2,
                 n_heads=2, dropout=0.1, extra_tokens=0):
        super().__init__(n_users, n_items, dim, sequences, max_seq_len, extra_tokens)
        if dim % n_heads:
            raise ValueError(f"domain.n_heads: {n_heads} does not divide domain.dim {dim}")
        self.pos_emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.encoder = _Transformer(dim, n_layers, n_heads, dropout)

    def encode(self, seqs):
        L = seqs.shape[1]
        x = self.item_emb(seqs) + self.pos_emb.weight[-L:]
        x = self.drop(x)
        keys = (seqs > 0).unsqueeze(1)                               # [B, 1, L]
        allowed = keys.expand(-1, L, -1)
        if self.causal:
            allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=seqs.device).tril()
        return self.encoder(x, allowed)


class GRU4Rec(SequenceModel):
    name = "gru4rec"

    def __init__(self, n_users, n_items, dim, sequences=None, max_seq_len=50, n_layers=1,
                 dropout=0.1):
        super().__init__(n_users, n_items, dim, sequences, max_seq_len)
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=n_layers, batch_first=True)

    def encode(self, seqs):
        # padding embeddings are zero and come first, so the state entering the first real item
        # is a fixed function of the pad count only
        out, _ = self.gru(self.drop(self.item_emb(seqs)))
        return out


class BERT4Rec(SASRec):
    """Bidirectional encoder; a user is encoded as [history[-(L-1):], MASK], read at MASK."""

    name = "bert4rec"
    causal = False

    def __init__(self, n_users, n_items, dim, sequences=None, max_seq_len=50, n_layers=2,
                 n_heads=2, dropout=0.1, mask_prob=0.2):
        super().__init__(n_users, n_items, dim, sequences, max_seq_len, n_layers, n_heads,
                         dropout, extra_tokens=1)
        self.mask_id = n_items + 1
        self.mask_prob = float(mask_prob)

    def user_vectors(self, users):
        h = self.history[users]
        seqs = torch.cat([h[:, 1:], torch.full((len(h), 1), self.mask_id, device=h.device)], 1)
        return self.encode(seqs)[:, -1]

    def sequence_logits(self, users, rng: np.random.Generator, sampler, n_neg: int):
        """Cloze: mask `mask_prob` of each window's items (at least one), predict them."""
        seqs = self.history_window(users)[:, 1:]                  # last L train items
        real = (seqs > 0).cpu().numpy()
        m = (rng.random(real.shape) < self.mask_prob) & real
        none = ~m.any(1)
        m[none, -1] = real[none, -1]                              # at least one target per user
        mask = torch.from_numpy(m).to(seqs.device)
        inp = seqs.masked_fill(mask, self.mask_id)
        h = self.encode(inp)[mask]
        rows = np.repeat(np.asarray(users), m.sum(1))
        neg = torch.as_tensor(sampler.sample(rows, n_neg, rng), device=h.device) + 1
        pos = (h * self.item_emb(seqs[mask])).sum(-1)
        negl = (h.unsqueeze(1) * self.item_emb(neg)).sum(-1)
        return pos, negl


__all__ = ["SASRec", "GRU4Rec", "BERT4Rec", "as_long"]
