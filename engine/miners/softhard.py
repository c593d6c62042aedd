"""Soft-hard mining: a random hard positive and a random hard negative per anchor.

For anchor a, the hard negatives are the negatives closer than its farthest
positive, d(a, n) < max_p d(a, p); the hard positives are the positives farther
than its closest negative, d(a, p) > min_n d(a, n). One of each is drawn
uniformly; an empty set falls back to all positives (or all negatives). One
triplet per anchor with at least one positive (and one negative).

Departures from the original code, on purpose:

- Anchors without any negative (a batch of one class) are dropped instead of
  failing on an empty minimum; a batch without any valid triplet gives empty
  triplets.
- torch's RNG and tensor ops instead of a NumPy loop over the anchors.
"""

from __future__ import annotations

import torch

from engine.miners import MINERS
from engine.miners._sampling import positive_and_negative_masks, uniform_choice
from engine.miners.base import Miner, Triplets, pairwise_distances


def hard_sets(distances: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hard positives, hard negatives) boolean masks, row by row."""
    inf = torch.tensor(float("inf"), device=distances.device, dtype=distances.dtype)
    farthest_positive = torch.where(pos_mask, distances, -inf).amax(1, keepdim=True)
    closest_negative = torch.where(neg_mask, distances, inf).amin(1, keepdim=True)
    return pos_mask & (distances > closest_negative), neg_mask & (distances < farthest_positive)


@MINERS.register("softhard")
class SofthardMiner(Miner):
    name = "softhard"

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        labels = labels.to(embeddings.device)
        pos_mask, neg_mask = positive_and_negative_masks(labels)
        anchors = (pos_mask.any(1) & neg_mask.any(1)).nonzero().squeeze(1)
        if anchors.numel() == 0:
            return Triplets.empty(embeddings.device)
        distances = pairwise_distances(embeddings)[anchors]
        pos_mask, neg_mask = pos_mask[anchors], neg_mask[anchors]
        hard_pos, hard_neg = hard_sets(distances, pos_mask, neg_mask)
        hard_pos = torch.where(hard_pos.any(1, keepdim=True), hard_pos, pos_mask)
        hard_neg = torch.where(hard_neg.any(1, keepdim=True), hard_neg, neg_mask)
        positives, _ = uniform_choice(hard_pos)
        negatives, _ = uniform_choice(hard_neg)
        return Triplets(anchors, positives, negatives)

    def __repr__(self) -> str:
        return "SofthardMiner()"
