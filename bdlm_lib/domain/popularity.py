"""Popularity: every user gets the items ranked by their number of train interactions.

The non-personalised reference line of the protocol: on 1-of-20 candidate sets whose negatives
are partly drawn by popularity (docs/protocol.md), it says how much of a model's HR@1 any ranking
by popularity alone already gets. Written as a fixed rank-1 factorisation so it shares the domain
interface: E_U^D = 1 (one column), E_I^D = log(1 + train count); logit = <e_u, e_i>. It has no
trainable weights: the trainer skips training, the run only counts and evaluates.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import DomainModel


class Popularity(DomainModel):
    name = "pop"

    def __init__(self, n_users: int, n_items: int, train_items=None):
        super().__init__(n_users, n_items, dim=1)
        counts = np.bincount(np.asarray(train_items if train_items is not None else [], np.int64),
                             minlength=n_items)[:n_items]
        self.register_buffer("item_count", torch.as_tensor(np.log1p(counts), dtype=torch.float32)[:, None])

    @property
    def device(self) -> torch.device:
        return self.item_count.device        # no parameters: the buffer says where the model is

    def embeddings(self):
        return torch.ones(self.n_users, 1, device=self.device), self.item_count
