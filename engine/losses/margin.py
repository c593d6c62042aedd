"""Margin loss (Wu et al., "Sampling Matters in Deep Embedding Learning", 2017).

For mined triplets (a, p, n) with d = sqrt(||x - y||² + 1e-8) and a boundary β
(learnable, one per class of the anchor, or a constant)::

    ℓ⁺ = [d(a,p) - β_a + α]₊        ℓ⁻ = [β_a - d(a,n) + α]₊
    L  = (Σ ℓ⁺ + ℓ⁻ + ν Σ β_a) / #{active pair terms}

Departures from the original code, on purpose (the published method):

* The normaliser counts active pair terms, (ℓ⁺ > 0) + (ℓ⁻ > 0), as in the authors'
  MXNet code; the original added two bool tensors, which PyTorch evaluates as a logical
  OR, so it counted triplets with any active term.
* ν > 0 works (the original raised a NameError) and, like the MXNet code, the
  regulariser shares the normaliser.
* No active term → zero loss with a working backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.losses import LOSSES
from engine.losses.base import DMLLoss
from engine.miners import Miner


@LOSSES.register("margin")
class MarginLoss(DMLLoss):
    name = "margin"
    REQUIRES_MINER = True
    MINER_OUTPUTS = ("triplets",)

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        miner: Miner | None = None,
        *,
        margin: float = 0.2,
        beta: float = 1.2,
        beta_lr: float = 5e-4,
        nu: float = 0.0,
        beta_constant: bool = False,
    ):
        super().__init__(num_classes, embed_dim, miner)
        self.margin = margin
        self.nu = nu
        self.beta_lr = beta_lr
        self.beta_constant = beta_constant
        if beta_constant:
            self.register_buffer("beta", torch.full((num_classes,), float(beta)))
        else:
            self.beta = nn.Parameter(torch.full((num_classes,), float(beta)))

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        if self.beta_constant:
            return []
        return [{"params": [self.beta], "lr": self.beta_lr, "weight_decay": 0.0, "name": "loss.margin.beta"}]

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        triplets = self.miner(embeddings, labels)
        if len(triplets) == 0:
            return self.zero(embeddings) + self.zero(self.beta)
        a, p, n = triplets.anchors, triplets.positives, triplets.negatives
        d_ap = ((embeddings[a] - embeddings[p]).pow(2).sum(1) + 1e-8).sqrt()
        d_an = ((embeddings[a] - embeddings[n]).pow(2).sum(1) + 1e-8).sqrt()
        beta = self.beta[labels[a]]
        pos = torch.relu(d_ap - beta + self.margin)
        neg = torch.relu(beta - d_an + self.margin)
        active = (pos > 0).sum() + (neg > 0).sum()
        total = pos.sum() + neg.sum() + self.nu * beta.sum()
        return total / active.clamp_min(1)
