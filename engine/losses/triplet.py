"""Triplet loss (Schroff et al., "FaceNet", 2015).

For mined triplets (a, p, n), with **squared** Euclidean distances as in FaceNet::

    L = mean_t [ ||x_a - x_p||² - ||x_a - x_n||² + m ]₊

Accepts the triplets of any triplet miner. The semihard miner reads the same margin m.

Departures from the original code, on purpose:

* No triplet in the batch → zero loss with a working backward.
"""

from __future__ import annotations

import torch

from engine.losses import LOSSES
from engine.losses.base import DMLLoss
from engine.miners import Miner


@LOSSES.register("triplet")
class TripletLoss(DMLLoss):
    name = "triplet"
    REQUIRES_MINER = True
    MINER_OUTPUTS = ("triplets",)

    def __init__(self, num_classes: int, embed_dim: int, miner: Miner | None = None, *, margin: float = 0.2):
        super().__init__(num_classes, embed_dim, miner)
        self.margin = margin

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        triplets = self.miner(embeddings, labels)
        if len(triplets) == 0:
            return self.zero(embeddings)
        anchors = embeddings[triplets.anchors]
        d_ap = (anchors - embeddings[triplets.positives]).pow(2).sum(1)
        d_an = (anchors - embeddings[triplets.negatives]).pow(2).sum(1)
        return torch.relu(d_ap - d_an + self.margin).mean()
