"""Distance-weighted sampling on randomly permuted labels (a "random labels" control).

The batch labels are permuted with ``torch.randperm``; then positives and
negatives are drawn exactly as in the ``distance`` miner, but with respect to
the permuted labels, so the mined tuples carry no information about the true
classes. Parameters: the ``miner.distance`` section (``lower_cutoff``,
``upper_cutoff``), as in the original, which read the ``miner_distance_*`` flags.

Departures from the original code, on purpose:

- Registered and named ``random_distance`` (the original's class called itself
  ``distance``, so code keyed on the miner's name, such as the SNR loss zeroing
  its regulariser for ``distance``, treated it as the real distance miner).
- ``upper_cutoff`` is applied when set (dead flag in the original); anchors
  without an admissible negative under the permuted labels are dropped.
- torch's RNG (``randperm``) instead of NumPy's shuffle.
"""

from __future__ import annotations

import torch

from engine.miners import MINERS
from engine.miners.base import Miner, Triplets, random_positives
from engine.miners.distance import distance_weighted_negatives


@MINERS.register("random_distance")
class RandomDistanceMiner(Miner):
    name = "random_distance"

    def __init__(self, lower_cutoff: float = 0.5, upper_cutoff: float | None = None):
        self.lower_cutoff = lower_cutoff
        self.upper_cutoff = upper_cutoff

    @classmethod
    def from_config(cls, config) -> RandomDistanceMiner:
        """Built from the ``miner.distance`` section (it has no section of its own)."""
        return cls(**config.miner.distance.model_dump())

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        labels = labels.to(embeddings.device)
        shuffled = labels[torch.randperm(labels.numel(), device=labels.device)]
        anchors, negatives = distance_weighted_negatives(embeddings, shuffled, self.lower_cutoff, self.upper_cutoff)
        if anchors.numel() == 0:
            return Triplets.empty(embeddings.device)
        return Triplets(anchors, random_positives(shuffled)[anchors], negatives)

    def __repr__(self) -> str:
        return f"RandomDistanceMiner(lower_cutoff={self.lower_cutoff}, upper_cutoff={self.upper_cutoff})"
