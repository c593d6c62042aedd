"""Generalised lifted structure loss (Hermans, Beyer & Leibe, "In Defense of the Triplet Loss", 2017;
after Song et al. 2016).

The ``lifted`` miner gives, per anchor a, the positive set P(a) (every other sample of
its class) and the negative set N(a) (every sample of another class). With the
Euclidean distance d over the embedding dimension::

    ℓ_a = [ log Σ_{p∈P(a)} e^{d(a,p)} + log Σ_{n∈N(a)} e^{m - d(a,n)} ]₊
    L   = mean_a ℓ_a + λ · mean_i ||x_i||₂

with m = ``neg_margin`` = 1 and λ = ``l2`` = 0.005. The norm regulariser (over the whole
batch, norm not squared) and the outer [·]₊ are kept as the original. Both sums are
computed with a masked log-sum-exp.

Departures from the original code, on purpose (the published method):

* d is the distance over the embedding dimension. The original applied
  ``nn.PairwiseDistance`` to 3-D tensors shaped (1, D, 1) and (1, D, |P|); old PyTorch
  reduced over dim 1 (D), but current PyTorch reduces over the last dimension (the
  set), so the original now gets one value per coordinate k,
  sqrt(Σ_{p∈P(a)} (x_{a,k} - x_{p,k})²), and its log-sum-exp runs over the D
  coordinates instead of over the set: not the published loss.
* No 1e-6 eps is added to the coordinate differences (``PairwiseDistance``'s eps).
* Anchors whose positive or negative set is empty (a batch of one class) are skipped;
  with no anchor left the loss is exactly zero (regulariser included) with a working
  backward.
"""

from __future__ import annotations

import torch

from engine.losses import LOSSES
from engine.losses.base import DMLLoss
from engine.miners import Miner
from engine.miners.base import AnchorSets


def masked_logsumexp(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log Σ_{mask} e^{values} per row; every row must have at least one True."""
    return torch.logsumexp(values.masked_fill(~mask, float("-inf")), dim=1)


def valid_anchor_sets(sets: AnchorSets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchors, positives, negatives) restricted to anchors with a non-empty positive and negative set."""
    if not isinstance(sets, AnchorSets):
        raise TypeError(f"expected AnchorSets from the miner, got {type(sets).__name__}")
    valid = sets.positives.any(1) & sets.negatives.any(1)
    return sets.anchors[valid], sets.positives[valid], sets.negatives[valid]


def embedding_distances(rows: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (R, B) computed from coordinate differences (no Gram-matrix cancellation;
    zero subgradient where a distance is 0)."""
    return torch.cdist(rows, embeddings, compute_mode="donot_use_mm_for_euclid_dist")


@LOSSES.register("lifted")
class LiftedLoss(DMLLoss):
    name = "lifted"
    REQUIRES_MINER = True
    MINER_OUTPUTS = ("lifted",)

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        miner: Miner | None = None,
        *,
        neg_margin: float = 1.0,
        l2: float = 0.005,
    ):
        super().__init__(num_classes, embed_dim, miner)
        self.neg_margin = neg_margin
        self.l2 = l2

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        anchors, positives, negatives = valid_anchor_sets(self.miner(embeddings, labels))
        if anchors.numel() == 0:
            return self.zero(embeddings)
        distances = embedding_distances(embeddings[anchors], embeddings)
        pos_term = masked_logsumexp(distances, positives)
        neg_term = masked_logsumexp(self.neg_margin - distances, negatives)
        loss = torch.relu(pos_term + neg_term).mean()
        return loss + self.l2 * torch.linalg.vector_norm(embeddings, dim=1).mean()
