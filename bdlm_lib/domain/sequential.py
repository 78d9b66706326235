"""Sequence recommenders: SASRec (Kang & McAuley 2018), GRU4Rec (Hidasi et al. 2016),
BERT4Rec (Sun et al. 2019).

Each has an item table E_I^D and represents a user by encoding the last `max_seq_len` items of
their train history (E_U^D = those encodings, so it has grad through the encoder); logits are
<h_u, e_i> and f_D(u, i) = h_u ⊙ e_i. SASRec and GRU4Rec train next-item on every position of
the users' train windows, BERT4Rec with cloze masking (`mask_prob`); all three against negatives
sampled from items the user has not touched (BPR or BCE, `params.domain.loss`).

Sequences are left-padded, so the last position is always the most recent item, and positions
(SASRec, BERT4Rec) line up between training windows and the inference history. Only real
positions are computed (packed tokens; the GRU reads packed sequences), so padding costs nothing.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .base import SequenceModel, as_long


class _Transformer(nn.Module):
    """Pre-LN transformer blocks (nn.TransformerEncoderLayer weights) run on the real tokens only.

    Amazon histories are short (Health: median 5 of 50 slots), so the per-token parts - layer
    norms, projections, feed-forward, most of the FLOPs at d = 576 - run on the packed real
    tokens, and only attention itself sees a padded layout (several times faster on such data,
    benchmarks/bench_sequence_models.py). Pads are masked as keys, so real positions do not
    depend on them (`encode_padded` is the reference); pad positions come back as zeros."""

    ATTN_CHUNKS = 4     # attention groups per batch (rows sorted by length)

    def __init__(self, dim: int, n_layers: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=dim, dropout=dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)           # on the input embeddings, once packed

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """x [B, L, d]; allowed [B, L, L] (True = may attend); real [B, L] the positions to
        compute, a suffix of each row (histories are left-padded)."""
        B, L, d = x.shape
        # the diagonal is always allowed so that pad queries (all keys masked) give no NaN rows
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=x.device)
        idx = real.nonzero(as_tuple=True)
        slot = torch.full((B, L), -1, dtype=torch.long, device=x.device)
        slot[idx] = torch.arange(len(idx[0]), device=x.device)      # packed row of each position
        # attention runs on rows sorted by length in ATTN_CHUNKS groups, each cut to its own
        # longest row: a 128-user Amazon batch is mostly 5-item histories and a few of 50
        lengths = real.sum(1)
        groups = []
        for rows in torch.argsort(lengths).chunk(self.ATTN_CHUNKS):
            n = int(lengths[rows].max())
            pos = slot[rows, L - n:]                                  # [b, n], -1 = pad
            groups.append((pos, pos >= 0, allowed[rows, L - n:, L - n:].unsqueeze(1)))
        h = self.drop(x[idx])                                         # [N, d] packed
        for blk in self.blocks:
            h = h + self._attention(blk, blk.norm1(h), groups)
            h = h + blk.dropout2(blk.linear2(blk.dropout(blk.activation(blk.linear1(blk.norm2(h))))))
        return x.new_zeros(B, L, d).index_put(idx, self.norm(h))

    def _attention(self, blk, h, groups):
        sa, H, d = blk.self_attn, self.n_heads, h.shape[1]
        qkv = F.linear(h, sa.in_proj_weight, sa.in_proj_bias)          # [N, 3d]
        out = torch.zeros_like(h)
        for pos, ok, allowed in groups:
            b, n = pos.shape
            g = qkv.new_zeros(b, n, 3 * d).index_put((ok,), qkv[pos[ok]])
            q, k, v = g.view(b, n, 3, H, d // H).permute(2, 0, 3, 1, 4)  # each [b, H, n, d/H]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                               dropout_p=sa.dropout if self.training else 0.0)
            out = out.index_put((pos[ok],), a.transpose(1, 2).reshape(b, n, d)[ok])
        return blk.dropout1(F.linear(out, sa.out_proj.weight, sa.out_proj.bias))


class SASRec(SequenceModel):
    name = "sasrec"
    causal = True
    flush_denormal = True          # the trainer flushes denormals (domain/denormals.py: why)

    def __init__(self, n_users, n_items, dim, sequences=None, max_seq_len=50, n_layers=2,
                 n_heads=2, dropout=0.1, extra_tokens=0):
        super().__init__(n_users, n_items, dim, sequences, max_seq_len, extra_tokens)
        if dim % n_heads:
            raise ValueError(f"domain.n_heads: {n_heads} does not divide domain.dim {dim}")
        self.pos_emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.encoder = _Transformer(dim, n_layers, n_heads, dropout)

    def encode(self, seqs):
        L = seqs.shape[1]
        x = self.item_emb(seqs) + self.pos_emb.weight[-L:]
        real = seqs > 0
        allowed = real.unsqueeze(1).expand(-1, L, -1)                 # keys: real items only
        if self.causal:
            allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=seqs.device).tril()
        # the last position is always computed: it is the user's vector even for an empty history
        real = real.clone()
        real[:, -1] = True
        return self.encoder(x, allowed, real)


class GRU4Rec(SequenceModel):
    name = "gru4rec"

    def __init__(self, n_users, n_items, dim, sequences=None, max_seq_len=50, n_layers=1,
                 dropout=0.1):
        super().__init__(n_users, n_items, dim, sequences, max_seq_len)
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=n_layers, batch_first=True)

    def encode(self, seqs):
        # the GRU reads each history from its first real item (a packed sequence): no steps
        # are spent on padding (Amazon: a median 5 of 50 slots are real), and the state entering
        # the first item is zero whatever the padding
        B, L = seqs.shape
        n = (seqs > 0).sum(1).clamp(min=1)                            # left-padded: a suffix
        ar = torch.arange(L, device=seqs.device)
        pad = (L - n).unsqueeze(1)
        src = (ar + pad) % L                                          # where each right-aligned slot reads
        x = self.drop(self.item_emb(seqs.gather(1, src)))             # histories right-padded
        packed = nn.utils.rnn.pack_padded_sequence(x, n.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=L)
        back = (ar - pad) % L                                         # and back to left-padded
        out = out.gather(1, back.unsqueeze(-1).expand(-1, -1, out.shape[-1]))
        return out * (ar >= pad).unsqueeze(-1)                        # zeros at the pads


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


def encode_padded(model: SequenceModel, seqs: torch.Tensor) -> torch.Tensor:
    """The reference for `model.encode`: the same weights run the plain way, every slot of the
    padded window computed (torch's own transformer layers; the GRU stepping through the pads).
    At real positions it equals `encode` for SASRec/BERT4Rec (tests/test_domain_models.py);
    benchmarks/bench_sequence_models.py times the two. Input dropout is applied as in training."""
    if isinstance(model, GRU4Rec):
        return model.gru(model.drop(model.item_emb(seqs)))[0]
    L = seqs.shape[1]
    x = model.encoder.drop(model.item_emb(seqs) + model.pos_emb.weight[-L:])
    allowed = (seqs > 0).unsqueeze(1).expand(-1, L, -1)
    if model.causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=seqs.device).tril()
    allowed = allowed | torch.eye(L, dtype=torch.bool, device=seqs.device)
    mask = torch.zeros(allowed.shape, device=seqs.device).masked_fill(~allowed, float("-inf"))
    mask = mask.repeat_interleave(model.encoder.n_heads, dim=0)
    for blk in model.encoder.blocks:
        x = blk(x, src_mask=mask)
    return model.encoder.norm(x)


__all__ = ["SASRec", "GRU4Rec", "BERT4Rec", "encode_padded", "as_long"]
