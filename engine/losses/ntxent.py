"""NT-Xent / InfoNCE over the in-batch positives (Sohn, "Improved Deep Metric Learning with
Multi-class N-pair Loss Objective", NeurIPS 2016; Oord et al., "Representation Learning with
Contrastive Predictive Coding", 2018; Chen et al., "A Simple Framework for Contrastive
Learning of Visual Representations", ICML 2020).

Every positive pair (i, p), p another sample of i's class, is one InfoNCE term whose
candidates are p and the negatives N(i) (the samples of other classes) of the anchor; with
s the cosine similarity and τ the temperature::

    ℓ_ip = −log( e^{s_ip/τ} / (e^{s_ip/τ} + Σ_{n ∈ N(i)} e^{s_in/τ}) )
         = softplus( log Σ_{n ∈ N(i)} e^{s_in/τ} − s_ip/τ )
    L    = mean of ℓ_ip over all positive pairs                    (τ = 0.07)

Other positives of the anchor are not in the denominator (the supervised form of NT-Xent
used by pytorch-metric-learning; :mod:`engine.losses.supcon` puts them there). Embeddings
are L2-normalised inside the loss. Against a reference set (``loss.xbm``), p and N(i)
range over the references.
"""

from __future__ import annotations

import torch.nn.functional as F

from engine.losses import LOSSES
from engine.losses.base import DMLLoss, cosines_against, logsumexp_over, reference_masks
from engine.miners import Miner


@LOSSES.register("ntxent")
class NTXentLoss(DMLLoss):
    name = "ntxent"
    REQUIRES_MINER = False
    REFERENCES = True

    def __init__(self, num_classes: int, embed_dim: int, miner: Miner | None = None, *, temperature: float = 0.07):
        super().__init__(num_classes, embed_dim, miner)
        self.temperature = temperature

    def compute_against(self, embeddings, labels, references, reference_labels):
        positives, negatives = reference_masks(labels, reference_labels)
        logits = cosines_against(embeddings, references) / self.temperature
        log_negatives = logsumexp_over(logits, negatives)  # −inf without negatives: every term of the row is 0
        terms = F.softplus(log_negatives[:, None] - logits) * positives
        return terms.sum() / positives.sum().clamp_min(1) + self.zero(embeddings)
