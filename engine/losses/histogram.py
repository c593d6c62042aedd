"""Histogram loss (Ustinova & Lempitsky, "Learning Deep Embeddings with Histogram Loss",
NIPS 2016).

The similarities s_ij = x_iᵀx_j of the pairs i < j (the embeddings as given; the
architecture normalises them) are split into positive (same class) and negative pairs.
With R bins at t_r = −1 + rΔ, r = 0..R−1, Δ = 2/(R−1), each similarity is spread linearly
over its two neighbouring bins, i.e. bin r receives the weight max(0, 1 − |s − t_r|/Δ)::

    h⁺_r = (1/|S⁺|) Σ_{(i,j) ∈ S⁺} δ_ijr        h⁻_r = (1/|S⁻|) Σ_{(i,j) ∈ S⁻} δ_ijr
    Φ⁺_r = Σ_{q ≤ r} h⁺_q
    L    = Σ_r h⁻_r Φ⁺_r

(the estimated probability that a random negative pair is more similar than a random
positive pair). Similarities are clamped to [−1, 1] so that rounding just outside the
support keeps its full mass.

Departures from the original code, on purpose:

* Binning is done in torch, vectorised over pairs and bins (:func:`bin_assignment`); the
  original computed bin indices in numpy and matched them to the bin support by float
  equality. The result is the paper's linear assignment.
* No positive or no negative pair in the batch → zero loss with a working backward
  (the empty histogram is all zeros).
"""

from __future__ import annotations

import torch

from engine.losses import LOSSES
from engine.losses.base import DMLLoss
from engine.miners import Miner


def bin_assignment(similarities: torch.Tensor, nbins: int) -> torch.Tensor:
    """(P, nbins) linear assignment δ_pr of each similarity to the bins t_r on [−1, 1]."""
    step = 2.0 / (nbins - 1)
    support = torch.linspace(-1.0, 1.0, nbins, dtype=similarities.dtype, device=similarities.device)
    s = similarities.clamp(-1.0, 1.0)
    return torch.relu(1.0 - (s[:, None] - support[None, :]).abs() / step)


def soft_histogram(similarities: torch.Tensor, nbins: int) -> torch.Tensor:
    """Normalised (nbins,) soft histogram of a 1-D set of similarities (zeros if it is empty)."""
    return bin_assignment(similarities, nbins).sum(dim=0) / max(similarities.numel(), 1)


@LOSSES.register("histogram")
class HistogramLoss(DMLLoss):
    name = "histogram"
    REQUIRES_MINER = False

    def __init__(self, num_classes: int, embed_dim: int, miner: Miner | None = None, *, nbins: int = 65):
        super().__init__(num_classes, embed_dim, miner)
        if nbins < 2:
            raise ValueError("histogram loss needs nbins >= 2")
        self.nbins = nbins

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = len(labels)
        i, j = torch.triu_indices(n, n, offset=1, device=embeddings.device)
        sims = (embeddings @ embeddings.T)[i, j]
        positive = (labels[i] == labels[j]).to(sims.dtype)
        h_pos = self._weighted_histogram(sims, positive) / positive.sum().clamp_min(1.0)
        h_neg = self._weighted_histogram(sims, 1.0 - positive) / (1.0 - positive).sum().clamp_min(1.0)
        return (h_neg * torch.cumsum(h_pos, dim=0)).sum() + self.zero(embeddings)

    def _weighted_histogram(self, sims: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Σ_pairs weight · max(0, 1 − |s − t_r|/Δ) per bin r, with two scatter-adds instead of a pairs × bins
        matrix: each similarity only touches its two neighbouring bins (same values as :func:`bin_assignment`)."""
        step = 2.0 / (self.nbins - 1)
        position = (sims.clamp(-1.0, 1.0) + 1.0) / step
        lower = position.detach().floor().clamp(0, self.nbins - 2).long()
        upper_share = position - lower.to(position.dtype)
        histogram = sims.new_zeros(self.nbins)
        histogram = histogram.index_add(0, lower, weights * (1.0 - upper_share))
        return histogram.index_add(0, lower + 1, weights * upper_share)
