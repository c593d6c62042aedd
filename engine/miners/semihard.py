"""Semi-hard negatives (Schroff et al., "FaceNet", 2015).

Per anchor, a positive p is drawn uniformly from its class (p ≠ a). The
candidate negatives are those with

    d(a, p) < d(a, n) < d(a, p) + m

(Euclidean distances, not squared); one is drawn uniformly, or any negative
uniformly when none qualifies. ``m`` is the margin of the loss in use
(:meth:`SemihardMiner.from_config`).

Departures from the original code, on purpose:

- The original read ``opt.loss_<loss>_margin`` and raised KeyError for losses
  without such a flag. ``from_config`` reads ``config.loss.<loss name>.margin``
  when that section has a ``margin`` field (triplet, margin, snr, …) and falls
  back to 0.2 otherwise.
- Anchors without a same-class partner or without any negative are dropped
  (the original assumed every sample had both; a singleton class made it fail).
  A batch without any valid triplet gives empty triplets.
- torch's RNG and tensor ops instead of NumPy loops over the anchors.
"""

from __future__ import annotations

import torch

from engine.miners import MINERS
from engine.miners._sampling import positive_and_negative_masks, uniform_choice
from engine.miners.base import Miner, Triplets, pairwise_distances

DEFAULT_MARGIN = 0.2


@MINERS.register("semihard")
class SemihardMiner(Miner):
    name = "semihard"

    def __init__(self, margin: float = DEFAULT_MARGIN):
        self.margin = float(margin)

    @classmethod
    def from_config(cls, config) -> SemihardMiner:
        """The margin of ``config.loss.<config.loss.name>`` if it has one, else 0.2."""
        section = getattr(config.loss, config.loss.name, None)
        margin = getattr(section, "margin", None)
        if isinstance(margin, bool) or not isinstance(margin, int | float):
            margin = DEFAULT_MARGIN
        return cls(margin=margin)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        labels = labels.to(embeddings.device)
        distances = pairwise_distances(embeddings)
        pos_mask, neg_mask = positive_and_negative_masks(labels)
        positives, has_positive = uniform_choice(pos_mask)
        keep = has_positive & neg_mask.any(1)
        anchors = keep.nonzero().squeeze(1)
        if anchors.numel() == 0:
            return Triplets.empty(embeddings.device)
        positives = positives[anchors]
        d_an = distances[anchors]
        d_ap = distances[anchors, positives][:, None]
        negatives_of = neg_mask[anchors]
        candidates = negatives_of & (d_an > d_ap) & (d_an < d_ap + self.margin)
        semihard, has_semihard = uniform_choice(candidates)
        fallback, _ = uniform_choice(negatives_of)
        return Triplets(anchors, positives, torch.where(has_semihard, semihard, fallback))

    def __repr__(self) -> str:
        return f"SemihardMiner(margin={self.margin})"
