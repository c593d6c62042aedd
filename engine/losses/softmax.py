"""Normalised softmax, "NormSoftmax" (Zhai & Wu, "Classification is a Strong Baseline for
Deep Metric Learning", BMVC 2019).

One trainable weight vector per training class; the rows of W are L2-normalised and the
logits are cosine similarities divided by a temperature::

    logits = x · Ŵᵀ / T        L = CE(logits, y)        (T = 0.05)

The embeddings x are used as given: the architecture's ``_normalize`` makes them unit
vectors, which turns the logits into scaled cosines as in the paper.

W is initialised U(±1/√D) and trained with its own learning rate (``loss.softmax.lr``,
1e-5 by default; the SOP runs used 2e-3), without weight decay, as in the original.
Departures from the original code: none.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.losses import LOSSES
from engine.losses.base import DMLLoss, unit_rows
from engine.miners import Miner


@LOSSES.register("softmax")
class NormSoftmaxLoss(DMLLoss):
    name = "softmax"
    REQUIRES_MINER = False

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        miner: Miner | None = None,
        *,
        lr: float = 1e-5,
        temperature: float = 0.05,
    ):
        super().__init__(num_classes, embed_dim, miner)
        self.lr = lr
        self.temperature = temperature
        bound = 1.0 / math.sqrt(embed_dim)
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim).uniform_(-bound, bound))

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        return [{"params": [self.weight], "lr": self.lr, "weight_decay": 0.0, "name": "loss.softmax.weight"}]

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        # 1/T is folded into the row normalisation of W: one pass over W instead of one over the logits.
        return F.linear(embeddings, unit_rows(self.weight.to(embeddings.dtype), 1.0 / self.temperature))

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings), labels)
