"""The information sharing module M of deep mutual learning (paper §4.3, Eq. 7-8).

M = {M_U [n_users, h], M_I [n_items, h]} lives in the LLM's hidden space h. It holds no gradient
(buffers): each side is pulled towards M by an MSE term (`mutual_learning_loss`), then writes its
own current rows into M (`write`), so information flows LLM -> M -> domain -> M -> LLM.

The domain side reaches M through P: R^d -> R^h (`DomainProjection`). P is a learned linear map
when d != h (initialised with the same seeded orthogonal map pre-loading uses), the identity when
d == h — in both cases followed by one fixed scalar per table, the pre-loading scale that brings the
mapped domain rows to the mean norm of the LLM's word embeddings. Without that scale the LLM rows
(pre-loaded at word-embedding norm) and the mapped domain rows would sit at different norms and
the MSE would mostly fight over scale. With PE on, M, the LLM's id rows and P(E^D) therefore all
start equal.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..llm.tokens import random_projection

UPDATES = ("copy", "ema")


def _idx(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.long().reshape(-1)
    return torch.as_tensor(np.asarray(x), dtype=torch.long).reshape(-1)


class DomainProjection(nn.Module):
    """P: R^d -> R^h, then a fixed per-table scale (see module doc)."""

    def __init__(self, d: int, h: int, seed: int = 0, user_scale: float = 1.0, item_scale: float = 1.0):
        super().__init__()
        self.d, self.h = int(d), int(h)
        if self.d != self.h:
            self.linear = nn.Linear(self.d, self.h, bias=False)
            with torch.no_grad():
                self.linear.weight.copy_(random_projection(self.d, self.h, seed).weight)
        else:
            self.linear = None           # identity (nothing to learn)
        self.register_buffer("scale", torch.tensor([float(user_scale), float(item_scale)]))

    def forward(self, x: torch.Tensor, kind: str = "item") -> torch.Tensor:
        y = self.linear(x) if self.linear is not None else x
        return y * self.scale[0 if kind == "user" else 1]

    @torch.no_grad()
    def calibrate(self, user_emb: torch.Tensor, item_emb: torch.Tensor, target_norm: float) -> None:
        """Set the per-table scales so each mapped table has mean row norm `target_norm`
        (the pre-loading rule of `llm.tokens.preload`)."""
        self.scale.fill_(1.0)
        for k, t in enumerate((user_emb, item_emb)):
            m = self(t.detach().float(), "user" if k == 0 else "item")
            self.scale[k] = target_norm / float(m.norm(dim=1).mean().clamp_min(1e-12))


class InformationSharingModule(nn.Module):
    """M_U, M_I as buffers (saved in state_dict, no grad). `write` = copy or EMA."""

    def __init__(self, user_init: torch.Tensor, item_init: torch.Tensor, update: str = "copy",
                 momentum: float = 0.9):
        super().__init__()
        if update not in UPDATES:
            raise ValueError(f"params.joint.ml_update must be one of {UPDATES}, got {update!r}")
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"params.joint.ml_momentum must be in [0, 1], got {momentum}")
        if user_init.shape[1] != item_init.shape[1]:
            raise ValueError("InformationSharingModule: user and item tables differ in width")
        self.update, self.momentum = update, float(momentum)
        self.register_buffer("M_U", user_init.detach().float().clone())
        self.register_buffer("M_I", item_init.detach().float().clone())

    @property
    def h(self) -> int:
        return self.M_U.shape[1]

    @classmethod
    def from_domain(cls, domain, proj: DomainProjection, update: str = "copy",
                    momentum: float = 0.9) -> "InformationSharingModule":
        """Initialise M from the (pre-trained) domain tables mapped by P."""
        with torch.no_grad():
            U, I = domain.embeddings()
            return cls(proj(U.float(), "user"), proj(I.float(), "item"), update, momentum)

    @torch.no_grad()
    def write(self, users, items, user_rows: torch.Tensor | None, item_rows: torch.Tensor | None) -> None:
        """Write one side's current rows for `users`/`items` into M.

        copy: M[x] <- row;  ema: M[x] <- m·M[x] + (1-m)·row. Duplicated ids are written once
        (their rows are identical: they come from one table)."""
        for table, ids, rows in ((self.M_U, users, user_rows), (self.M_I, items, item_rows)):
            if rows is None:
                continue
            ids = _idx(ids).to(table.device)
            if len(ids) == 0:
                continue
            uniq, first = _first_occurrence(ids)
            r = rows.detach().to(table.dtype).to(table.device).reshape(len(ids), -1)[first]
            if self.update == "copy":
                table[uniq] = r
            else:
                table[uniq] = self.momentum * table[uniq] + (1.0 - self.momentum) * r

    @torch.no_grad()
    def distance(self, rows_u: torch.Tensor, rows_i: torch.Tensor, users, items) -> float:
        """The value of Eq. 7/8 (mean-squared distance of the given rows to M), as a float."""
        return float(mutual_learning_loss(rows_u.detach(), rows_i.detach(), self, users, items))


def _first_occurrence(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    uniq, inv = torch.unique(ids, return_inverse=True)
    first = torch.full((len(uniq),), len(ids), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inv, torch.arange(len(ids), device=ids.device), reduce="amin")
    return uniq, first


def mutual_learning_loss(rows_u: torch.Tensor, rows_i: torch.Tensor, M: InformationSharingModule,
                         users, items) -> torch.Tensor:
    """Eq. 7/8: MSE(E_U[u], M_U[u]) + MSE(E_I[i], M_I[i]).

    `rows_u`/`rows_i` are one side's rows for `users`/`items` ([len(users), h], [len(items), h]),
    already gathered and (for the domain side) mapped by P. M contributes no gradient."""
    u, i = _idx(users).to(M.M_U.device), _idx(items).to(M.M_I.device)
    loss = rows_u.new_zeros(())
    if len(u):
        loss = loss + F.mse_loss(rows_u.float(), M.M_U[u].to(rows_u.device))
    if len(i):
        loss = loss + F.mse_loss(rows_i.float(), M.M_I[i].to(rows_i.device))
    return loss
