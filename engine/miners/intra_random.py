"""Intra-class random triplets (a degenerate control).

bs times (bs = the number of samples in the batch): a class present in the
batch is drawn uniformly, then anchor, positive and negative are drawn
uniformly *from that same class*, with replacement (so a = p = n can happen).
Every triplet is thus of one class; it makes sense with any batch of at least
one sample, a batch of a single class included.

Departures from the original code, on purpose:

- Registered and named ``intra_random`` (the original's class called itself
  ``random``, the name of the real random miner).
- torch's RNG and one vectorised draw instead of a Python loop of bs steps; an
  empty batch gives empty triplets.
"""

from __future__ import annotations

import torch

from engine.miners import MINERS
from engine.miners.base import Miner, Triplets


@MINERS.register("intra_random")
class IntraRandomMiner(Miner):
    name = "intra_random"

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        device = embeddings.device
        labels = labels.to(device)
        n = labels.numel()
        if n == 0:
            return Triplets.empty(device)
        classes, class_of = torch.unique(labels, return_inverse=True)
        chosen = torch.randint(classes.numel(), (n,), device=device)
        members = (class_of[None, :] == chosen[:, None]).float()  # (bs, B), each row non-empty
        picks = torch.multinomial(members, 3, replacement=True)
        return Triplets(picks[:, 0], picks[:, 1], picks[:, 2])

    def __repr__(self) -> str:
        return "IntraRandomMiner()"
