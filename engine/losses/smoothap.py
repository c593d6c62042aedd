"""Smooth-AP (Brown et al., "Smooth-AP: Smoothing the Path Towards Large-Scale Image
Retrieval", ECCV 2020).

Average precision of every anchor's ranking with the rank indicator replaced by a sigmoid
of temperature τ. With s the cosine similarity, P(i) the other samples of anchor i's class,
A(i) every sample but i, and G(u) = sigmoid(u/τ)::

    R(k, S) = 1 + Σ_{l ∈ S, l ≠ k} G(s_il − s_ik)          (soft rank of k within S)
    AP_i    = 1/|P(i)| Σ_{k ∈ P(i)} R(k, P(i)) / R(k, A(i))
    L       = mean of (1 − AP_i) over the anchors with |P(i)| ≥ 1       (τ = 0.01)

as Eq. 7 of the paper (the query is in neither set). Embeddings are L2-normalised inside
the loss. The positives of every anchor are gathered into a padded (B, max |P|) index
matrix, so the cost is B · max|P| · R instead of the B · R · R of the all-pairs form.
Against a reference set (``loss.xbm``), P(i) and A(i) range over the references.
"""

from __future__ import annotations

import torch

from engine.losses import LOSSES
from engine.losses.base import DMLLoss, anchor_mean, cosines_against, reference_masks
from engine.miners import Miner

SIGMOID_AT_ZERO = 0.5  # G(s_ik − s_ik): the l = k term, taken out of both sums


@LOSSES.register("smoothap")
class SmoothAPLoss(DMLLoss):
    name = "smoothap"
    REQUIRES_MINER = False
    REFERENCES = True

    def __init__(self, num_classes: int, embed_dim: int, miner: Miner | None = None, *, temperature: float = 0.01):
        super().__init__(num_classes, embed_dim, miner)
        self.temperature = temperature

    def compute_against(self, embeddings, labels, references, reference_labels):
        positives, negatives = reference_masks(labels, reference_labels)
        count = positives.sum(1)
        width = max(int(count.max()), 1) if count.numel() else 1
        # the positives' columns first (stable: in reference order), padded with whatever follows
        slots = torch.sort(positives.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :width]
        slot_valid = torch.arange(width, device=count.device)[None, :] < count[:, None]
        sims = cosines_against(embeddings, references)
        soft = torch.sigmoid((sims[:, None, :] - sims.gather(1, slots)[:, :, None]) / self.temperature)  # (B, P, R)
        sets = torch.stack([positives, positives | negatives], dim=2).to(sims.dtype)  # (B, R, 2): P(i), A(i)
        ranks = torch.bmm(soft, sets).add_(1.0 - SIGMOID_AT_ZERO)  # (B, P, 2): R(k, P(i)), R(k, A(i))
        ap = (ranks[..., 0] / ranks[..., 1] * slot_valid).sum(1) / count.clamp_min(1)
        return anchor_mean(1.0 - ap, count > 0) + self.zero(embeddings)
