"""Circle loss (Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity
Optimization", CVPR 2020; the pair-wise label form).

With s the cosine similarity, per anchor i its positives s_p (other samples of its class)
and negatives s_n (samples of other classes), and the self-paced weights (not
differentiated, as in the paper)::

    α_p = [1 + m − s_p]₊        α_n = [s_n + m]₊        Δ_p = 1 − m        Δ_n = m
    ℓ_i = log(1 + Σ_n e^{γ α_n (s_n − Δ_n)} · Σ_p e^{−γ α_p (s_p − Δ_p)})
        = softplus( log Σ_n e^{γ α_n (s_n − Δ_n)} + log Σ_p e^{−γ α_p (s_p − Δ_p)} )
    L   = mean of ℓ_i over the anchors with a positive and a negative

with m = 0.4 and γ = 80, the paper's setting for fine-grained image retrieval. Embeddings
are L2-normalised inside the loss. Against a reference set (``loss.xbm``), the positives
and negatives range over the references.
"""

from __future__ import annotations

import torch.nn.functional as F

from engine.losses import LOSSES
from engine.losses.base import DMLLoss, anchor_mean, cosines_against, logsumexp_over, reference_masks
from engine.miners import Miner


@LOSSES.register("circle")
class CircleLoss(DMLLoss):
    name = "circle"
    REQUIRES_MINER = False
    REFERENCES = True

    def __init__(self, num_classes: int, embed_dim: int, miner: Miner | None = None, *, m: float = 0.4,
                 gamma: float = 80.0):
        super().__init__(num_classes, embed_dim, miner)
        self.m = m
        self.gamma = gamma

    def compute_against(self, embeddings, labels, references, reference_labels):
        positives, negatives = reference_masks(labels, reference_labels)
        sims = cosines_against(embeddings, references)
        fixed = sims.detach()
        pos_logits = (1.0 + self.m - fixed).clamp_min_(0.0).mul_(-self.gamma) * (sims - (1.0 - self.m))
        neg_logits = (fixed + self.m).clamp_min_(0.0).mul_(self.gamma) * (sims - self.m)
        per_anchor = F.softplus(logsumexp_over(pos_logits, positives) + logsumexp_over(neg_logits, negatives))
        return anchor_mean(per_anchor, positives.any(1) & negatives.any(1)) + self.zero(embeddings)
