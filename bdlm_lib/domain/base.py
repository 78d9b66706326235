"""The one interface every domain-specific recommender exposes (paper §4.1.2, §4.2).

A `DomainModel` owns a user table E_U^D and an item table E_I^D (`user_embeddings()`,
`item_embeddings()`, both differentiable), a pair feature f_D(u, i) (`pair_feature`) and logits
for (user, item) pairs (`forward` / `score`). The later stages read only this interface:
pre-loading copies `embeddings()`, the LLM-enhanced model concatenates `pair_feature` with h_L.

Two kinds of model share it:
- pair models (mf, ncf, lightgcn): trained on (user, positive, negatives) triples;
- sequence models (sasrec, gru4rec, bert4rec): trained on users' train sequences
  (`sequence_logits`), the user representation being an encoding of the train history.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn


def as_long(x, device=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.long().to(device) if device is not None else x.long()
    t = torch.from_numpy(np.array(x, dtype=np.int64))     # a copy: pandas arrays are read-only
    return t.to(device) if device is not None else t


class DomainModel(nn.Module):
    """Base class: subclasses implement `represent` (and `feature`/`logit` when not a dot product)."""

    name: str = "base"
    unit: str = "pairs"          # "pairs" (interaction triples) or "users" (train sequences)

    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__()
        self.n_users, self.n_items, self.dim = int(n_users), int(n_items), int(dim)
        self.feature_dim = self.dim
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None   # set inside inference()
        self._in_inference = False

    # --- what subclasses define -------------------------------------------------------------
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_U^D [n_users, dim], E_I^D [n_items, dim]) with grad; one pass for both."""
        raise NotImplementedError

    def represent(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair user and item vectors: users [B] -> [B, d]; items [B] or [B, K] -> [..., d]."""
        if self._cache is not None:
            U, I = self._cache
        else:
            U, I = self.embeddings()
        return U[users], I[items]

    def feature(self, zu: torch.Tensor, zi: torch.Tensor) -> torch.Tensor:
        """f_D from the two vectors; default e_u ⊙ e_i (GMF, LightGCN, sequence models)."""
        if zi.dim() == zu.dim() + 1:
            zu = zu.unsqueeze(-2)
        return zu * zi

    def logit(self, zu: torch.Tensor, zi: torch.Tensor) -> torch.Tensor:
        """Default: the dot product (= sum of the GMF feature)."""
        return self.feature(zu, zi).sum(-1)

    # --- the shared interface -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the model's weights live (`params.domain.device`); ids are moved there."""
        return next(self.parameters()).device

    def user_embeddings(self) -> torch.Tensor:
        return self.embeddings()[0]

    def item_embeddings(self) -> torch.Tensor:
        return self.embeddings()[1]

    def pair_feature(self, users, items) -> torch.Tensor:
        """f_D(u, i): [B, feature_dim] (items [B]) or [B, K, feature_dim] (items [B, K])."""
        return self.feature(*self.represent(as_long(users, self.device), as_long(items, self.device)))

    def forward(self, users, items) -> torch.Tensor:
        """Logits, shaped like `items` ([B] or [B, K] candidates per user)."""
        return self.logit(*self.represent(as_long(users, self.device), as_long(items, self.device)))

    def score(self, users, items) -> torch.Tensor:
        return self.forward(users, items)

    def score_all(self, users) -> torch.Tensor:
        """Logits of every item for each user ([B] -> [B, n_items]): one matrix product where the
        logit is the default dot product, else `forward` over the whole catalogue per user."""
        users = as_long(users, self.device)
        items = torch.arange(self.n_items, device=self.device)
        if self.dot_product:
            zu, zi = self.represent(users, items)
            return zu @ zi.T
        return self.forward(users, items.expand(len(users), -1))

    @property
    def dot_product(self) -> bool:
        """Whether the logit is the default dot product of the two vectors (not NCF's MLP)."""
        return type(self).logit is DomainModel.logit and type(self).feature is DomainModel.feature

    @contextmanager
    def inference(self) -> Iterator["DomainModel"]:
        """Eval mode, no grad, and the full embedding tables computed once (a LightGCN propagation
        or one encoding of every history) instead of once per scored batch. Re-entrant: inside
        an open inference() the tables are reused (a full ranking calls its scorer chunk by chunk)."""
        if self._in_inference:
            yield self
            return
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                self._in_inference = True
                self._cache = self.inference_tables()
                yield self
        finally:
            self._cache, self._in_inference = None, False
            self.train(was_training)

    def inference_tables(self):
        """What `inference()` caches; None = compute per scored batch."""
        return self.embeddings()

    def predict(self, users, items, batch_size: int = 16384) -> np.ndarray:
        """Logits for aligned (user, item) arrays as float64 numpy, chunked, without grad."""
        u, i = as_long(users), as_long(items)
        out = []
        with self.inference():
            for s in range(0, len(u), batch_size):
                out.append(self.forward(u[s:s + batch_size], i[s:s + batch_size]).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def extra_repr(self) -> str:
        return f"n_users={self.n_users}, n_items={self.n_items}, dim={self.dim}"


class SequenceModel(DomainModel):
    """Item table + a user representation encoded from the user's train history.

    Item ids are shifted by one inside the model (0 = padding, n_items + 1 = [MASK] for BERT4Rec).
    The history matrix (last `max_seq_len` train items per user, left-padded) is a buffer, so a
    saved model scores users without the dataset.
    """

    unit = "users"

    def __init__(self, n_users: int, n_items: int, dim: int, sequences, max_seq_len: int,
                 extra_tokens: int = 0):
        super().__init__(n_users, n_items, dim)
        self.max_seq_len = int(max_seq_len)
        self.item_emb = nn.Embedding(n_items + 1 + extra_tokens, dim, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        hist = torch.zeros(n_users, self.max_seq_len, dtype=torch.long)
        if sequences is not None:
            hist = left_pad([np.asarray(s) + 1 for s in sequences], self.max_seq_len)
        self.register_buffer("history", hist)

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, d] for shifted, left-padded item sequences [B, L]."""
        raise NotImplementedError

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """The user representation: the encoder's state at the last history position."""
        return self.encode(self.history[users])[:, -1]

    def embeddings(self):
        U = torch.cat([self.user_vectors(torch.arange(s, min(s + 1024, self.n_users), device=self.device))
                       for s in range(0, self.n_users, 1024)])
        return U, self.item_emb.weight[1:self.n_items + 1]

    def inference_tables(self):
        # encoding every user is costly (a transformer over each history); in evaluation only
        # the scored users are encoded, chunk by chunk
        return None

    def represent(self, users, items):
        if self._cache is not None:
            return super().represent(users, items)
        # only the batch's users are encoded (training / small calls)
        uniq, inv = torch.unique(users, return_inverse=True)
        return self.user_vectors(uniq)[inv], self.item_emb(items + 1)

    def sequence_logits(self, users: np.ndarray, rng: np.random.Generator, sampler, n_neg: int):
        """Next-item training: (pos logits [N], neg logits [N, n_neg]) over the non-padded positions
        of the users' last max_seq_len + 1 train items (SASRec/GRU4Rec objective)."""
        seqs = self.history_window(users)                         # [B, L+1], shifted ids
        inp, tgt = seqs[:, :-1], seqs[:, 1:]
        h = self.encode(inp)                                      # [B, L, d]
        mask = (inp > 0) & (tgt > 0)
        rows = np.repeat(np.asarray(users), mask.sum(1).cpu().numpy())
        neg = torch.as_tensor(sampler.sample(rows, n_neg, rng), device=h.device) + 1
        hv = h[mask]
        pos = (hv * self.item_emb(tgt[mask])).sum(-1)
        negl = (hv.unsqueeze(1) * self.item_emb(neg)).sum(-1)
        return pos, negl

    def history_window(self, users: np.ndarray) -> torch.Tensor:
        """Training windows of length max_seq_len + 1 (the extra item is the first target)."""
        return self._windows[as_long(users)].to(self.device)

    def set_train_sequences(self, sequences) -> None:
        """Windows for training (not saved: only the dataset's train split is needed to train)."""
        self._windows = left_pad([np.asarray(s) + 1 for s in sequences], self.max_seq_len + 1)


def left_pad(seqs, length: int) -> torch.Tensor:
    """Last `length` items of each sequence, right-aligned, 0-padded on the left."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            out[r, length - len(s):] = s
    return torch.from_numpy(out)
