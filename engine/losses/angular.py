"""Angular loss (Wang et al., "Deep Metric Learning with Angular Loss", 2017), combined with N-pair.

The ``npair`` miner gives every anchor a one positive p and the negative set N(a) (all
samples of other classes). With x̂ the L2-normalised embeddings and t = tan²(α)::

    f_{a,n} = 4t · (x̂_a + x̂_p)ᵀ x̂_n - 2(1 + t) · x̂_aᵀ x̂_p
    L_ang   = mean_a log(1 + Σ_{n∈N(a)} e^{f_{a,n}})
    L_np    = mean_a log(1 + Σ_{n∈N(a)} e^{x_aᵀ(x_n - x_p)})      (un-normalised x)
    L       = L_np + λ_ang · L_ang + λ · mean_i ||x_i||₂

with α = 45° (t = 1), λ_ang = ``npair_ang_weight`` = 2 and λ = ``npair_l2`` = 0.005
(the mean norm, not the squared norm, over the whole batch, kept as the original).
Both log(1 + Σ e^…) are computed as a log-sum-exp over {0} ∪ {…}: the same value,
without overflow.

Departures from the original code, on purpose:

* Ragged negative sets (a class drawn twice in a ``class_random`` batch gives its
  anchors fewer negatives) are boolean masks. The original gathered the negatives into
  one (A, |N|, D) tensor, which needs every anchor to have the same number.
* The N-pair logits are not clamped to [-50, 50]. The clamp was the original's
  overflow guard; the log-sum-exp needs none. Values only differ where a logit leaves
  [-50, 50], where the original's gradient vanished.
* Anchors without a negative (a batch of one class) are skipped; with no anchor left
  the loss is exactly zero (regulariser included) with a working backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.losses import LOSSES
from engine.losses.base import DMLLoss
from engine.losses.lifted import valid_anchor_sets
from engine.losses.npair import log1p_sum_exp, npair_terms
from engine.miners import Miner


@LOSSES.register("angular")
class AngularLoss(DMLLoss):
    name = "angular"
    REQUIRES_MINER = True
    MINER_OUTPUTS = ("npair",)

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        miner: Miner | None = None,
        *,
        alpha: float = 45.0,
        npair_ang_weight: float = 2.0,
        npair_l2: float = 0.005,
    ):
        super().__init__(num_classes, embed_dim, miner)
        self.alpha = alpha
        self.npair_ang_weight = npair_ang_weight
        self.npair_l2 = npair_l2
        self.tan_sq = math.tan(math.radians(alpha)) ** 2

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        anchors, positives, negatives = valid_anchor_sets(self.miner(embeddings, labels))
        if anchors.numel() == 0:
            return self.zero(embeddings)
        positive = positives.to(torch.uint8).argmax(1)  # the one positive of each row
        unit = F.normalize(embeddings, dim=1)
        u_a, u_p = unit[anchors], unit[positive]
        f = 4.0 * self.tan_sq * ((u_a + u_p) @ unit.T) - 2.0 * (1.0 + self.tan_sq) * (u_a * u_p).sum(1, keepdim=True)
        angular = log1p_sum_exp(f, negatives).mean()
        npair = npair_terms(embeddings, anchors, positive, negatives).mean()
        loss = npair + self.npair_ang_weight * angular
        return loss + self.npair_l2 * torch.linalg.vector_norm(embeddings, dim=1).mean()
