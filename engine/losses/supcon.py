"""Supervised contrastive loss (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020;
the L_out form).

With s_ij the cosine similarity, τ the temperature, P(i) the other samples of i's class and
A(i) every sample but i::

    ℓ_i = −1/|P(i)| Σ_{p ∈ P(i)} log( e^{s_ip/τ} / Σ_{a ∈ A(i)} e^{s_ia/τ} )
    L   = mean of ℓ_i over the anchors with |P(i)| ≥ 1            (τ = 0.1)

Embeddings are L2-normalised inside the loss. Against a reference set (``loss.xbm``), P(i)
and A(i) range over the references instead of the batch.
"""

from __future__ import annotations

import torch

from engine.losses import LOSSES
from engine.losses.base import DMLLoss, anchor_mean, cosines_against, reference_masks
from engine.miners import Miner


@LOSSES.register("supcon")
class SupConLoss(DMLLoss):
    name = "supcon"
    REQUIRES_MINER = False
    REFERENCES = True

    def __init__(self, num_classes: int, embed_dim: int, miner: Miner | None = None, *, temperature: float = 0.1):
        super().__init__(num_classes, embed_dim, miner)
        self.temperature = temperature

    def compute_against(self, embeddings, labels, references, reference_labels):
        positives, negatives = reference_masks(labels, reference_labels)
        logits = cosines_against(embeddings, references) / self.temperature
        log_denominator = torch.logsumexp(logits.masked_fill(~(positives | negatives), float("-inf")), dim=1)
        count = positives.sum(1)
        mean_positive = (logits * positives).sum(1) / count.clamp_min(1)
        return anchor_mean(log_denominator - mean_positive, count > 0) + self.zero(embeddings)
