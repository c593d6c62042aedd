"""N-pair mining (Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", 2016).

Every sample that has at least one same-class partner in the batch is an anchor.
Each anchor gets one positive, drawn uniformly from the other samples of its class,
and every sample of another class as a negative. The result is an
:class:`~engine.miners.base.AnchorSets` with exactly one True per positive row.
With ``class_random`` batches a class may be drawn twice, so the negative sets can
have different sizes; they are boolean masks, so nothing needs equal sizes.

Used by the ``npair`` and ``angular`` losses (``OUTPUT = "npair"``).
"""

from __future__ import annotations

import torch

from engine.miners import MINERS
from engine.miners.base import AnchorSets, Miner


def same_class_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(same class and not self, other class) as (B, B) boolean masks."""
    same = labels[:, None] == labels[None, :]
    different = ~same
    same.fill_diagonal_(False)
    return same, different


@MINERS.register("npair")
class NPairMiner(Miner):
    name = "npair"
    OUTPUT = "npair"

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> AnchorSets:
        same, different = same_class_masks(labels)
        anchors = same.any(1).nonzero().squeeze(1)
        candidates = same[anchors]
        # A uniform draw among the True entries of each row: argmax of masked uniform scores.
        scores = torch.rand(candidates.shape, device=labels.device).masked_fill(~candidates, -1.0)
        chosen = scores.argmax(1)
        positives = torch.zeros_like(candidates)
        positives[torch.arange(anchors.numel(), device=labels.device), chosen] = True
        return AnchorSets(anchors, positives, different[anchors])
