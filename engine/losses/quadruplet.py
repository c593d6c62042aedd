"""Quadruplet loss (Chen et al., "Beyond triplet loss: a deep quadruplet network for person re-identification", 2017).

For every mined triplet (a, p, n) a fourth sample k is drawn uniformly from the batch
samples whose class differs from both the anchor's and the negative's class. With the
(non-squared) Euclidean distance d::

    L = mean_t [d(a,p) - d(a,n) + α₁]₊  +  mean_{t with a k} [d(a,p) - d(n,k) + α₂]₊

The first term is the triplet loss; the second pushes the anchor-positive distance
below the distance of a negative pair that does not involve the anchor. α₁ = α₂ = 0.2
by default. The draw uses the torch RNG (:meth:`QuadrupletLoss.fourth_samples`).
As the original, d is the plain, non-squared Euclidean norm (zero subgradient at 0;
the paper writes squared learned distances).

Departures from the original code, on purpose (the published method):

* The fourth sample's class differs from both the anchor's and the negative's class
  (Chen et al.). The original drew a *batch* index j among those whose triplet had a
  different negative index (``neg_j != neg_i``) and used x_j, so the class of x_j was
  unconstrained, and the draw only lined up when #triplets == batch size.
* A triplet for which no such sample exists (fewer than three classes relevant to it in
  the batch) contributes only its triplet term; the quadruplet term is the mean over the
  triplets that have a fourth sample, and 0 if none has one.
* No triplet in the batch → zero loss with a working backward.
"""

from __future__ import annotations

import torch

from engine.losses import LOSSES
from engine.losses.base import DMLLoss
from engine.miners import Miner


@LOSSES.register("quadruplet")
class QuadrupletLoss(DMLLoss):
    name = "quadruplet"
    REQUIRES_MINER = True
    MINER_OUTPUTS = ("triplets",)

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        miner: Miner | None = None,
        *,
        margin_alpha_1: float = 0.2,
        margin_alpha_2: float = 0.2,
    ):
        super().__init__(num_classes, embed_dim, miner)
        self.margin_alpha_1 = margin_alpha_1
        self.margin_alpha_2 = margin_alpha_2

    @staticmethod
    def fourth_samples(labels: torch.Tensor, anchors: torch.Tensor, negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(one uniformly drawn batch index per triplet, whether the triplet has a valid one).

        Valid: the sample's class differs from the anchor's and from the negative's class.
        Where no valid sample exists the returned index is meaningless.
        """
        candidates = (labels[None, :] != labels[anchors][:, None]) & (labels[None, :] != labels[negatives][:, None])
        scores = torch.rand(candidates.shape, device=labels.device).masked_fill(~candidates, -1.0)
        return scores.argmax(1), candidates.any(1)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        triplets = self.miner(embeddings, labels)
        if len(triplets) == 0:
            return self.zero(embeddings)
        a, p, n = triplets.anchors, triplets.positives, triplets.negatives
        d_ap = torch.linalg.vector_norm(embeddings[a] - embeddings[p], dim=1)
        d_an = torch.linalg.vector_norm(embeddings[a] - embeddings[n], dim=1)
        loss = torch.relu(d_ap - d_an + self.margin_alpha_1).mean()
        fourth, valid = self.fourth_samples(labels, a, n)
        # Masked mean over the triplets that have a fourth sample (no host sync on CUDA).
        d_nk = torch.linalg.vector_norm(embeddings[n] - embeddings[fourth], dim=1)
        quad = torch.relu(d_ap - d_nk + self.margin_alpha_2) * valid
        return loss + quad.sum() / valid.sum().clamp_min(1)
