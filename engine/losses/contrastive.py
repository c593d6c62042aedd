"""Contrastive loss (Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", 2006).

The pairs come from mined triplets (a, p, n): each gives one positive pair (a, p) and
one negative pair (a, n). With the (non-squared) Euclidean distance d::

    L = mean_t [d(a,p) - m⁺]₊ + mean_t [m⁻ - d(a,n)]₊

with m⁺ = 0 and m⁻ = 1 by default, as the original (both parts averaged over the
triplets, then added).

Departures from the original code, on purpose:

* d is the plain Euclidean norm; the original's ``nn.PairwiseDistance`` added
  eps = 1e-6 to every coordinate of the difference before the norm. The norm has a
  zero subgradient at d = 0 (a triplet whose positive is the anchor itself), so no eps
  is needed.
* No triplet in the batch → zero loss with a working backward.
"""

from __future__ import annotations

import torch

from engine.losses import LOSSES
from engine.losses.base import DMLLoss
from engine.miners import Miner


@LOSSES.register("contrastive")
class ContrastiveLoss(DMLLoss):
    name = "contrastive"
    REQUIRES_MINER = True
    MINER_OUTPUTS = ("triplets",)

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        miner: Miner | None = None,
        *,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
    ):
        super().__init__(num_classes, embed_dim, miner)
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        triplets = self.miner(embeddings, labels)
        if len(triplets) == 0:
            return self.zero(embeddings)
        anchors = embeddings[triplets.anchors]
        d_ap = torch.linalg.vector_norm(anchors - embeddings[triplets.positives], dim=1)
        d_an = torch.linalg.vector_norm(anchors - embeddings[triplets.negatives], dim=1)
        return torch.relu(d_ap - self.pos_margin).mean() + torch.relu(self.neg_margin - d_an).mean()
