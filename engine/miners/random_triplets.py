"""Random triplets: a uniform sample of the batch's valid (anchor, positive, negative) triplets.

A triplet is valid when y_a = y_p, a ≠ p and y_n ≠ y_a. The miner returns
min(bs, #valid) distinct valid triplets, drawn uniformly without replacement
(bs = the number of samples in the batch).

The valid set is never enumerated: anchor a owns P_a · N_a triplets (P_a
same-class others, N_a other-class samples), so the valid triplets are numbered
0 … T-1 anchor by anchor, ``T`` distinct numbers are drawn (see
:func:`~engine.miners._sampling.distinct_uniform`) and each is decoded back to
(a, i-th positive of a, j-th negative of a) with tensor ops.

Departures from the original code, on purpose:

- The original built the Python list of every valid triplet and drew exactly bs
  of them with ``random.sample``, which raises when fewer than bs exist (e.g.
  batches with few repeated classes). Here min(bs, #valid) are returned, and a
  batch without any valid triplet gives empty triplets.
- torch's RNG instead of Python's ``random``, so ``torch.manual_seed`` makes it
  deterministic and it runs on the embeddings' device.
"""

from __future__ import annotations

import torch

from engine.miners import MINERS
from engine.miners._sampling import distinct_uniform, positive_and_negative_masks
from engine.miners.base import Miner, Triplets


@MINERS.register("random")
class RandomMiner(Miner):
    name = "random"

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        device = embeddings.device
        labels = labels.to(device)
        positives, negatives = positive_and_negative_masks(labels)
        n_pos, n_neg = positives.sum(1), negatives.sum(1)
        per_anchor = n_pos * n_neg
        total = int(per_anchor.sum())
        if total == 0:
            return Triplets.empty(device)
        flat = distinct_uniform(total, labels.numel(), device)
        ends = per_anchor.cumsum(0)
        anchors = torch.searchsorted(ends, flat, right=True)
        local = flat - (ends[anchors] - per_anchor[anchors])
        pos_rank, neg_rank = local // n_neg[anchors], local % n_neg[anchors]
        # Row-wise column indices with the True entries first, in ascending order.
        pos_order = torch.argsort((~positives).to(torch.uint8), dim=1, stable=True)
        neg_order = torch.argsort((~negatives).to(torch.uint8), dim=1, stable=True)
        return Triplets(anchors, pos_order[anchors, pos_rank], neg_order[anchors, neg_rank])

    def __repr__(self) -> str:
        return "RandomMiner()"
