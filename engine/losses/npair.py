"""N-pair loss (Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", 2016).

The ``npair`` miner gives every anchor a (one with a same-class partner) one positive
p(a) and the negative set N(a) of all samples of other classes. With inner products of
the (un-normalised) embeddings::

    ℓ_a = log(1 + Σ_{n∈N(a)} exp(x_aᵀx_n - x_aᵀx_p))
    L   = mean_a ℓ_a + λ · mean_i ||x_i||₂

with λ = ``l2`` = 0.005. ℓ_a is computed as a log-sum-exp over {0} ∪ {x_aᵀ(x_n - x_p)},
which is the same value without overflow. The negatives are every other-class sample of
the batch, as the original's miner (Sohn's batches hold one pair per class, where this
is the same thing).

Kept as the original, though it differs from the paper: the regulariser is the mean
*norm* of the embeddings over the whole batch, where Sohn penalises the squared norm.

Departures from the original code, on purpose:

* The original divided BN-Inception embeddings by 4 inside the loss. That scaling is
  specific to one architecture and is not done here (it belongs to the model).
* Anchors without a negative (a batch of one class) are skipped; with no anchor left
  the loss is exactly zero (regulariser included) with a working backward.
"""

from __future__ import annotations

import torch

from engine.losses import LOSSES
from engine.losses.base import DMLLoss
from engine.losses.lifted import valid_anchor_sets
from engine.miners import Miner


def log1p_sum_exp(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log(1 + Σ_{mask} e^{values}) per row, stable (a log-sum-exp with an extra 0 term)."""
    masked = values.masked_fill(~mask, float("-inf"))
    return torch.logsumexp(torch.cat([masked.new_zeros(masked.shape[0], 1), masked], dim=1), dim=1)


def npair_terms(embeddings: torch.Tensor, anchors: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """ℓ_a = log(1 + Σ_n exp(x_aᵀx_n - x_aᵀx_p)) per anchor; ``positive`` holds one batch index per anchor."""
    x_a = embeddings[anchors]
    similarities = x_a @ embeddings.T
    s_ap = (x_a * embeddings[positive]).sum(1, keepdim=True)
    return log1p_sum_exp(similarities - s_ap, negatives)


@LOSSES.register("npair")
class NPairLoss(DMLLoss):
    name = "npair"
    REQUIRES_MINER = True
    MINER_OUTPUTS = ("npair",)

    def __init__(self, num_classes: int, embed_dim: int, miner: Miner | None = None, *, l2: float = 0.005,
                 input_scale: float = 1.0):
        super().__init__(num_classes, embed_dim, miner)
        self.l2 = l2
        self.input_scale = input_scale

    @classmethod
    def from_config(cls, config, num_classes: int, miner: Miner | None) -> NPairLoss:
        """``loss.npair.input_scale`` unset: the original's rule, x/4 for BN-Inception's large un-normalised outputs."""
        params = config.loss.npair.model_dump()
        if params["input_scale"] is None:
            params["input_scale"] = 0.25 if config.model.arch.startswith("bninception") else 1.0
        return cls(num_classes, config.model.embed_dim, miner, **params)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.input_scale != 1.0:
            embeddings = embeddings * self.input_scale
        anchors, positives, negatives = valid_anchor_sets(self.miner(embeddings, labels))
        if anchors.numel() == 0:
            return self.zero(embeddings)
        positive = positives.to(torch.uint8).argmax(1)  # the one positive of each row
        loss = npair_terms(embeddings, anchors, positive, negatives).mean()
        return loss + self.l2 * torch.linalg.vector_norm(embeddings, dim=1).mean()
