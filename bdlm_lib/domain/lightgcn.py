"""LightGCN (He et al. 2020) on plain torch.sparse.

    A_hat = D^{-1/2} A D^{-1/2},  A = [[0, R], [R^T, 0]]  (the user-item bipartite train graph)
    X^{k+1} = A_hat X^k,          z = mean(X^0, ..., X^K),  logit = <z_u, z_i>,  f_D = z_u ⊙ z_i

A_hat is built once as a CSR tensor. Because it is symmetric, the backward of X -> A_hat X is
A_hat G: `SymmetricSpMM` reuses the same CSR matrix instead of letting autograd build a transpose
(or gather/scatter an [edges, d] message tensor as message-passing libraries do) — this is what
makes a d = 576 propagation over ML-1M's ~2M directed edges cheap on two cores.

Training batches score their (user, candidates) pairs with `pair_dot.pair_dot`, whose sparse
backward avoids scattering [B, K, d] gradients into the tables.

The train edges are kept as buffers (`graph_users`, `graph_items`), so a saved model rebuilds its
graph without the dataset.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import DomainModel, as_long
from .pair_dot import csr_matrix, pair_dot


def normalized_adjacency(users, items, n_users: int, n_items: int) -> torch.Tensor:
    """Symmetric-normalised bipartite adjacency of the (deduplicated) edges, as sparse CSR."""
    u = torch.as_tensor(np.asarray(users), dtype=torch.long)
    i = torch.as_tensor(np.asarray(items), dtype=torch.long) + n_users
    key = torch.unique(u * (n_users + n_items) + i)        # repeated interactions count once
    u, i = key // (n_users + n_items), key % (n_users + n_items)
    n = n_users + n_items
    rows, cols = torch.cat([u, i]), torch.cat([i, u])
    deg = torch.bincount(rows, minlength=n).float()
    dinv = deg.pow(-0.5)
    dinv[deg == 0] = 0.0
    return csr_matrix(rows, cols, dinv[rows] * dinv[cols], (n, n))


class SymmetricSpMM(torch.autograd.Function):
    """y = A x for a symmetric sparse A; dL/dx = A^T g = A g (no transpose built)."""

    @staticmethod
    def forward(ctx, A, x):
        ctx.A = A
        return torch.sparse.mm(A, x)

    @staticmethod
    def backward(ctx, g):
        return None, torch.sparse.mm(ctx.A, g)


def propagate(A: torch.Tensor, x0: torch.Tensor, n_layers: int) -> torch.Tensor:
    """mean(x0, A x0, ..., A^K x0)."""
    out, x = x0, x0
    for _ in range(n_layers):
        x = SymmetricSpMM.apply(A, x)
        out = out + x
    return out / (n_layers + 1)


class LightGCN(DomainModel):
    name = "lightgcn"

    def __init__(self, n_users: int, n_items: int, dim: int, n_layers: int = 3,
                 train_users=None, train_items=None):
        super().__init__(n_users, n_items, dim)
        self.n_layers = int(n_layers)
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user_emb.weight, std=0.1)      # the LightGCN paper's init
        nn.init.normal_(self.item_emb.weight, std=0.1)
        gu = torch.tensor(np.asarray(train_users if train_users is not None else []), dtype=torch.int32)
        gi = torch.tensor(np.asarray(train_items if train_items is not None else []), dtype=torch.int32)
        self.register_buffer("graph_users", gu)
        self.register_buffer("graph_items", gi)
        self._adj: torch.Tensor | None = None

    def adjacency(self) -> torch.Tensor:
        if self._adj is None:    # built lazily: after load_state_dict the buffers hold the edges
            if len(self.graph_users) == 0:
                raise ValueError("lightgcn: no training graph (build it with ds= or load a saved model)")
            self._adj = normalized_adjacency(self.graph_users.cpu().numpy(), self.graph_items.cpu().numpy(),
                                             self.n_users, self.n_items).to(self.user_emb.weight.device)
        return self._adj

    def _apply(self, fn, *args, **kwargs):
        self._adj = None          # moved (.to / .cuda): rebuild A_hat on the new device
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._adj = None          # new edges -> rebuild A_hat on next use

    def embeddings(self):
        x0 = torch.cat([self.user_emb.weight, self.item_emb.weight])
        z = propagate(self.adjacency(), x0, self.n_layers)
        return z[:self.n_users], z[self.n_users:]

    def forward(self, users, items):
        """Logits, shaped like `items`. Training batches ([B, K] candidates, no cached tables) take
        `pair_dot`: the same dot products without [B, K, d] temporaries (its docstring says why)."""
        users, items = as_long(users, self.device), as_long(items, self.device)
        if self._cache is None and items.dim() == 2 and users.dim() == 1 and len(users) == len(items):
            U, I = self.embeddings()
            return pair_dot(U, I, users, items)
        return super().forward(users, items)
