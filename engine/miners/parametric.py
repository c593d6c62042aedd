"""Negatives drawn from a fixed parametric distance distribution (the fixed-policy case of PADS).

Roth et al., "PADS: Policy-Adapted Sampling for Visual Similarity Learning"
(CVPR 2020) sample negatives from a distribution over anchor–negative
distances; this miner keeps that distribution fixed. The range ``support_lim``
= (low, high) is cut into ``n_support`` equal bins and ``mode`` gives the
piecewise-constant target distribution over the bins:

    uniform     every bin
    hards       bins inside d ≤ 0.5
    semihards   bins inside 0.3 ≤ d ≤ 0.7
    veryhards   bins inside d ≤ 0.3

A bin counts as inside a region when its whole extent is (up to 1e-6), so a
sampled distance never leaves the mode's region. Every anchor–negative distance
is binned; negatives outside [low, high] or in a zero-weight bin are not
admissible. Per anchor, negative j is drawn with probability ∝ w(bin_j) / (the
number of the anchor's negatives in bin_j), so the bin of the sampled negative
follows the target distribution restricted to the bins the anchor occupies.
The positive is drawn uniformly from the anchor's class (p ≠ a).

Departures from the original code, on purpose:

- The original could not run: its ``miner_parametric_*`` flags were never
  defined, mode ``semihards`` opened an IPython shell, and its "outside the
  support" mask (d < low AND d > high) was always False. This is a working
  implementation of the intended rule; the parameters live in ``miner.parametric``.
- Anchors without any admissible negative fall back to a uniformly drawn
  negative (instead of a distribution of zeros); anchors without a same-class
  partner or without negatives are dropped.
- A mode whose region contains no whole bin (too coarse a support) is rejected
  with ValueError when the miner is built, rather than silently sampling
  uniformly everywhere.
"""

from __future__ import annotations

import torch

from engine.miners import MINERS
from engine.miners._sampling import positive_and_negative_masks, uniform_choice
from engine.miners.base import Miner, Triplets, pairwise_distances

MODES: dict[str, tuple[float, float]] = {
    "uniform": (float("-inf"), float("inf")),
    "hards": (float("-inf"), 0.5),
    "semihards": (0.3, 0.7),
    "veryhards": (float("-inf"), 0.3),
}
EDGE_TOLERANCE = 1e-6


def bin_weights(mode: str, n_support: int, support_lim: tuple[float, float]) -> torch.Tensor:
    """The mode's (unnormalised, 0/1) weight of each of the ``n_support`` bins."""
    low, high = support_lim
    edges = torch.linspace(low, high, n_support + 1, dtype=torch.float64)
    region_low, region_high = MODES[mode]
    inside = (edges[:-1] >= region_low - EDGE_TOLERANCE) & (edges[1:] <= region_high + EDGE_TOLERANCE)
    return inside.float()


@MINERS.register("parametric")
class ParametricMiner(Miner):
    name = "parametric"

    def __init__(self, mode: str = "uniform", n_support: int = 100, support_lim: tuple[float, float] = (0.1, 1.9)):
        if mode not in MODES:
            raise ValueError(f"unknown parametric mode {mode!r}; allowed: {', '.join(MODES)}")
        low, high = (float(v) for v in support_lim)
        if not low < high:
            raise ValueError(f"support_lim must be (low, high) with low < high, got {tuple(support_lim)}")
        if n_support < 1:
            raise ValueError(f"n_support must be at least 1, got {n_support}")
        self.mode, self.n_support, self.support_lim = mode, int(n_support), (low, high)
        self.weights = bin_weights(mode, self.n_support, self.support_lim)
        if not self.weights.any():
            raise ValueError(
                f"mode {mode!r} covers no whole bin of {n_support} bins over {self.support_lim}; use more bins"
            )

    def negative_probabilities(self, distances: torch.Tensor, neg_mask: torch.Tensor) -> torch.Tensor:
        """Row-wise (unnormalised) sampling weights of the negatives; all-zero rows have none admissible."""
        low, high = self.support_lim
        edges = torch.linspace(low, high, self.n_support + 1, device=distances.device, dtype=distances.dtype)
        bins = (torch.bucketize(distances, edges, right=True) - 1).clamp(0, self.n_support - 1)
        in_support = neg_mask & (distances >= low) & (distances <= high)
        weights = self.weights.to(distances.device, distances.dtype)[bins] * in_support
        admissible = weights > 0
        counts = torch.zeros(distances.shape[0], self.n_support, device=distances.device, dtype=distances.dtype)
        counts.scatter_add_(1, bins, admissible.to(distances.dtype))
        return torch.where(admissible, weights / counts.gather(1, bins).clamp_min(1.0), 0.0)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        device = embeddings.device
        labels = labels.to(device)
        pos_mask, neg_mask = positive_and_negative_masks(labels)
        anchors = (pos_mask.any(1) & neg_mask.any(1)).nonzero().squeeze(1)
        if anchors.numel() == 0:
            return Triplets.empty(device)
        pos_mask, neg_mask = pos_mask[anchors], neg_mask[anchors]
        probabilities = self.negative_probabilities(pairwise_distances(embeddings)[anchors], neg_mask)
        has_admissible = probabilities.sum(1) > 0
        # Rows without an admissible negative sample uniformly over all their negatives.
        probabilities = torch.where(has_admissible[:, None], probabilities, neg_mask.to(probabilities.dtype))
        negatives = torch.multinomial(probabilities, 1).squeeze(1)
        positives, _ = uniform_choice(pos_mask)
        return Triplets(anchors, positives, negatives)

    def __repr__(self) -> str:
        return f"ParametricMiner(mode={self.mode!r}, n_support={self.n_support}, support_lim={self.support_lim})"
