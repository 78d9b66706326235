"""MF / GMF (He et al. 2017): logit = <e_u, e_i>, pair feature f_D(u, i) = e_u ⊙ e_i.

The GMF output weight h is fixed to ones (plain MF): a learned h adds nothing a rescaling of the
tables cannot do, and keeping the dot product makes E_U^D, E_I^D directly comparable rows.
"""
from __future__ import annotations

from torch import nn

from .base import DomainModel


class MF(DomainModel):
    name = "mf"

    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__(n_users, n_items, dim)
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        # small init: with d = 576 a unit-variance init gives logits of size ~sqrt(d)
        nn.init.normal_(self.user_emb.weight, std=0.1 / dim ** 0.25)
        nn.init.normal_(self.item_emb.weight, std=0.1 / dim ** 0.25)

    def embeddings(self):
        return self.user_emb.weight, self.item_emb.weight

    def represent(self, users, items):
        # index the rows directly: no need to materialise the full tables
        return self.user_emb(users), self.item_emb(items)
