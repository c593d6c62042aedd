"""Lifted-structure mining (Song et al. 2016; the generalised form of Hermans et al. 2017).

Anchors are the samples with at least one same-class partner in the batch. For each
anchor the positive set is every other sample of its class and the negative set every
sample of another class, returned as boolean masks in an
:class:`~engine.miners.base.AnchorSets` (ragged sets are just rows with more True
entries). Used by the ``lifted`` loss (``OUTPUT = "lifted"``).
"""

from __future__ import annotations

import torch

from engine.miners import MINERS
from engine.miners.base import AnchorSets, Miner
from engine.miners.npair import same_class_masks


@MINERS.register("lifted")
class LiftedMiner(Miner):
    name = "lifted"
    OUTPUT = "lifted"

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> AnchorSets:
        same, different = same_class_masks(labels)
        anchors = same.any(1).nonzero().squeeze(1)
        return AnchorSets(anchors, same[anchors], different[anchors])
