"""Distance-weighted sampling (Wu et al., "Sampling Matters in Deep Embedding Learning", 2017).

For every anchor, a positive is drawn uniformly from its class and a negative with
probability proportional to the inverse of the density of distances between
points on the unit hypersphere of dimension D:

    q(d)^-1 ∝ d^(2-D) · (1 - d²/4)^((3-D)/2),   d clamped from below at ``lower_cutoff``

Same-class samples get weight 0. With ``upper_cutoff`` set, negatives farther than
it get weight 0 too (the published method; the original's flag existed but was
never applied, so the default None reproduces the paper's runs). Anchors without
any admissible negative are dropped instead of crashing.
"""

from __future__ import annotations

import torch

from engine.miners import MINERS
from engine.miners.base import Miner, Triplets, pairwise_distances, random_positives


def distance_weighted_negatives(
    embeddings: torch.Tensor, labels: torch.Tensor, lower_cutoff: float, upper_cutoff: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchor indices that have a negative, one sampled negative per such anchor)."""
    dim = embeddings.shape[1]
    distances = pairwise_distances(embeddings).clamp_min(lower_cutoff)
    log_weights = (2.0 - dim) * distances.log() - ((dim - 3.0) / 2.0) * (1.0 - 0.25 * distances.pow(2)).clamp_min(1e-8).log()
    admissible = labels[:, None] != labels[None, :]
    if upper_cutoff is not None:
        within = admissible & (distances < upper_cutoff)
        # Wu et al. fall back to every negative when the cut-off leaves none.
        admissible = torch.where(within.any(1, keepdim=True), within, admissible)
    anchors = admissible.any(1).nonzero().squeeze(1)
    if anchors.numel() == 0:
        return anchors, anchors
    log_weights = log_weights[anchors].masked_fill(~admissible[anchors], float("-inf"))
    # multinomial takes unnormalised weights; subtracting the row maximum keeps exp() finite
    weights = (log_weights - log_weights.max(dim=1, keepdim=True).values).exp()
    negatives = torch.multinomial(weights, 1).squeeze(1)
    return anchors, negatives


@MINERS.register("distance")
class DistanceMiner(Miner):
    name = "distance"

    def __init__(self, lower_cutoff: float = 0.5, upper_cutoff: float | None = None):
        self.lower_cutoff = lower_cutoff
        self.upper_cutoff = upper_cutoff

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        anchors, negatives = distance_weighted_negatives(embeddings, labels, self.lower_cutoff, self.upper_cutoff)
        if anchors.numel() == 0:
            return Triplets.empty(embeddings.device)
        positives = random_positives(labels)[anchors]
        return Triplets(anchors, positives, negatives)

    def __repr__(self) -> str:
        return f"DistanceMiner(lower_cutoff={self.lower_cutoff}, upper_cutoff={self.upper_cutoff})"
