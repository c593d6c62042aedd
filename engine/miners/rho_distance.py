"""Distance-weighted sampling with the paper's ρ-regularisation (Roth et al., ICML 2020).

Per anchor with a same-class partner (and a negative), a positive p is drawn
uniformly from its class (p ≠ a). With probability ``cp`` the triplet becomes
the "push" triplet (a, a, p): the positive slot holds the anchor itself and the
*negative* slot the same-class sample, so the loss pushes samples of one class
apart, which raises the embedding's spectral variety (ρ) and improves
generalisation. Otherwise the negative is drawn by distance-weighted sampling
exactly as in the ``distance`` miner (``lower_cutoff``, ``upper_cutoff``).

``last_push_count`` holds the number of push triplets of the latest batch.

Departures from the original code, on purpose:

- ``upper_cutoff`` is applied when set (the original's flag was dead); the
  default None reproduces the paper's runs.
- Anchors without a same-class partner or without any negative are dropped, so
  a batch of one class gives empty triplets instead of failing in the sampler.
- The push count is kept as ``last_push_count`` (the original stored it and
  never used it); torch's RNG and tensor ops instead of NumPy loops.
"""

from __future__ import annotations

import torch

from engine.miners import MINERS
from engine.miners._sampling import positive_and_negative_masks
from engine.miners.base import Miner, Triplets, random_positives
from engine.miners.distance import distance_weighted_negatives


@MINERS.register("rho_distance")
class RhoDistanceMiner(Miner):
    name = "rho_distance"

    def __init__(self, lower_cutoff: float = 0.5, upper_cutoff: float | None = None, cp: float = 0.2):
        if not 0.0 <= cp <= 1.0:
            raise ValueError(f"cp must lie in [0, 1], got {cp}")
        self.lower_cutoff = lower_cutoff
        self.upper_cutoff = upper_cutoff
        self.cp = float(cp)
        self.last_push_count = 0

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        device = embeddings.device
        labels = labels.to(device)
        self.last_push_count = 0
        pos_mask, _ = positive_and_negative_masks(labels)
        sampled, negatives = distance_weighted_negatives(embeddings, labels, self.lower_cutoff, self.upper_cutoff)
        if sampled.numel() == 0:
            return Triplets.empty(device)
        keep = pos_mask[sampled].any(1)
        anchors, negatives = sampled[keep], negatives[keep]
        if anchors.numel() == 0:
            return Triplets.empty(device)
        positives = random_positives(labels)[anchors]
        push = torch.rand(anchors.numel(), device=device) < self.cp
        self.last_push_count = int(push.sum())
        return Triplets(anchors, torch.where(push, anchors, positives), torch.where(push, positives, negatives))

    def __repr__(self) -> str:
        return f"RhoDistanceMiner(lower_cutoff={self.lower_cutoff}, upper_cutoff={self.upper_cutoff}, cp={self.cp})"
