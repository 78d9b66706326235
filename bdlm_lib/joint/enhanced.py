"""The LLM-enhanced domain model (paper §4.2, Eq. 5-6).

    ŷ(u, i) = σ(wᵀ [f_D(u, i) ; x(u, i)] + b)

with x(u, i) = h_L(u, i), the LLM's top-layer hidden state at item i's token in u's prompt, detached
(no gradient flows into the LLM from this loss). GPT4SM reuses the same head with x = frozen text
embeddings of the item and of the user's history.

The head starts as the wrapped domain model: w on f_D is copied from the model's own output layer
(NCF's `out`) or set to ones (models whose logit is the sum of f_D: MF, LightGCN, sequence models),
w on x starts at zero. So at step 0 the enhanced model scores exactly as the pre-trained domain
model, and whatever the LLM feature adds is learned on top (a fair comparison with the plain model).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..domain.base import as_long


class EnhancedDomainModel(nn.Module):
    """A `DomainModel` plus a linear head over [f_D ; x] (x = h_L, or any extra feature)."""

    def __init__(self, domain: nn.Module, extra_dim: int):
        super().__init__()
        self.domain = domain
        self.extra_dim = int(extra_dim)
        fd = int(domain.feature_dim)
        self.head = nn.Linear(fd + self.extra_dim, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            out = getattr(domain, "out", None)
            if isinstance(out, nn.Linear) and out.in_features == fd and out.out_features == 1:
                self.head.weight[:, :fd] = out.weight
                self.head.bias.copy_(out.bias if out.bias is not None else torch.zeros(1))
            else:
                self.head.weight[:, :fd] = 1.0

    def forward(self, users, items, extra: torch.Tensor) -> torch.Tensor:
        """Logits [B] for aligned users [B], items [B] and extra features [B, extra_dim]."""
        f = self.domain.pair_feature(as_long(users), as_long(items))
        # detached: Eq. 6 only trains Θ_D; h_L may come from a GPU LLM while the domain side is on CPU
        x = extra.detach().to(device=f.device, dtype=f.dtype).reshape(len(f), self.extra_dim)
        return self.head(torch.cat([f, x], dim=-1)).squeeze(-1)

    def loss(self, users, items, extra: torch.Tensor, labels) -> torch.Tensor:
        """L_D: binary cross-entropy on positives and sampled negatives (Eq. 6)."""
        y = torch.as_tensor(np.asarray(labels), dtype=torch.float32) if not isinstance(labels, torch.Tensor) \
            else labels.float()
        logits = self(users, items, extra)
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.device))

    @torch.no_grad()
    def predict(self, users, items, extra: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """Logits as float64 numpy, without grad, the domain tables computed once."""
        u, i = as_long(users), as_long(items)
        out = []
        with self.domain.inference():
            was = self.training
            self.eval()
            for s in range(0, len(u), batch_size):
                out.append(self(u[s:s + batch_size], i[s:s + batch_size],
                                extra[s:s + batch_size]).double().cpu().numpy())
            self.train(was)
        return np.concatenate(out) if out else np.zeros(0)
