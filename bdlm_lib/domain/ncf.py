"""NCF / NeuMF (He et al. 2017): a GMF branch e_u ⊙ e_i and an MLP tower over [e_u ; e_i], fused
by one output layer. f_D(u, i) = the fused vector [GMF ; last MLP layer] the output layer reads.

One user and one item table feed both branches (the shared-embedding NeuMF variant), so
E_U^D / E_I^D are the model's whole user/item representation — what pre-loading copies.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import DomainModel, as_long


class NCF(DomainModel):
    name = "ncf"

    def __init__(self, n_users: int, n_items: int, dim: int, mlp_layers=(256, 128, 64),
                 dropout: float = 0.1):
        super().__init__(n_users, n_items, dim)
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user_emb.weight, std=0.1 / dim ** 0.25)
        nn.init.normal_(self.item_emb.weight, std=0.1 / dim ** 0.25)
        layers, width = [], 2 * dim
        for h in mlp_layers:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.feature_dim = dim + width
        self.out = nn.Linear(self.feature_dim, 1)
        with torch.no_grad():        # start close to GMF: ones on the GMF half, small MLP half
            self.out.weight[:, :dim] = 1.0
            self.out.weight[:, dim:].normal_(std=0.01)
            self.out.bias.zero_()

    def embeddings(self):
        return self.user_emb.weight, self.item_emb.weight

    def represent(self, users, items):
        return self.user_emb(users), self.item_emb(items)

    def feature(self, zu, zi):
        if zi.dim() == zu.dim() + 1:
            zu = zu.unsqueeze(-2).expand_as(zi)
        return torch.cat([zu * zi, self.mlp(torch.cat([zu, zi], -1))], -1)

    def logit(self, zu, zi):
        return self.out(self.feature(zu, zi)).squeeze(-1)

    def score_all(self, users) -> torch.Tensor:
        """Every item's logit for each user, as `forward` computes it, with the MLP's first layer
        split into its user and item halves (each computed once, not once per pair) and the
        output layer's GMF half as one matrix product."""
        users = as_long(users, self.device)
        zu, zi = self.user_emb(users), self.item_emb.weight              # [B, d], [N, d]
        first = self.mlp[0]
        hu = zu @ first.weight[:, :self.dim].T + first.bias               # [B, h]
        hi = zi @ first.weight[:, self.dim:].T                            # [N, h]
        h = self.mlp[1:](hu[:, None, :] + hi[None, :, :])                 # [B, N, width]
        w = self.out.weight[0]
        return (zu * w[:self.dim]) @ zi.T + h @ w[self.dim:] + self.out.bias
