"""Multi-similarity loss (Wang et al., "Multi-Similarity Loss with General Pair Weighting
for Deep Metric Learning", CVPR 2019).

With S = X Xᵀ (the embeddings as given; the architecture normalises them), for every
anchor i the positives P_i are the other samples of its class and the negatives N_i the
samples of the other classes. Pair mining keeps::

    negatives n ∈ N_i with S_in + ε > min_{p ∈ P_i} S_ip
    positives p ∈ P_i with S_ip − ε < max_{n ∈ N_i} S_in

and the loss of an anchor with at least one kept positive and one kept negative is::

    ℓ_i = 1/α · log(1 + Σ_p e^{−α(S_ip − λ)}) + 1/β · log(1 + Σ_n e^{β(S_in − λ)})
    L   = (1/m) Σ_i ℓ_i          (m = batch size; skipped anchors contribute 0)

Against a reference set (``loss.xbm``), P_i and N_i range over the references.

Both log(1 + Σ) terms are log-sum-exps over the kept pairs plus a constant 0 logit, so they
are stable and never NaN. Mining is done with masks on the detached similarity matrix.

Departures from the original code, on purpose (the published method):

* The sum over anchors is divided by the batch size m, as in the paper's formula and the
  authors' code; the original took the mean over the anchors that survived mining.
* When every anchor is skipped (e.g. a batch of one class), the loss is 0 with a working
  backward; the original crashed (``torch.stack`` of an empty list).
"""

from __future__ import annotations

import torch

from engine.losses import LOSSES
from engine.losses.base import DMLLoss, reference_masks
from engine.miners import Miner


def _log1p_sum_exp(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Row-wise log(1 + Σ_{keep} e^{logits}), stable; rows without a kept entry give 0."""
    masked = logits.masked_fill(~keep, float("-inf"))
    padded = torch.cat([masked.new_zeros(masked.shape[0], 1), masked], dim=1)
    return torch.logsumexp(padded, dim=1)


@LOSSES.register("multisimilarity")
class MultiSimilarityLoss(DMLLoss):
    name = "multisimilarity"
    REQUIRES_MINER = False
    REFERENCES = True

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        miner: Miner | None = None,
        *,
        pos_weight: float = 2.0,
        neg_weight: float = 40.0,
        margin: float = 0.1,
        thresh: float = 0.5,
    ):
        super().__init__(num_classes, embed_dim, miner)
        self.pos_weight = pos_weight
        self.neg_weight = neg_weight
        self.margin = margin
        self.thresh = thresh

    def mine(self, sim: torch.Tensor, labels: torch.Tensor, reference_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (kept positives, kept negatives), each (B, R), of the MS pair mining (R = B without references)."""
        sim = sim.detach()
        pos, neg = reference_masks(labels, labels if reference_labels is None else reference_labels)
        hardest_pos = sim.masked_fill(~pos, float("inf")).amin(dim=1, keepdim=True)
        hardest_neg = sim.masked_fill(~neg, float("-inf")).amax(dim=1, keepdim=True)
        keep_neg = neg & (sim + self.margin > hardest_pos)
        keep_pos = pos & (sim - self.margin < hardest_neg)
        return keep_pos, keep_neg

    def compute_against(self, embeddings, labels, references, reference_labels):
        sim = embeddings @ references.T
        keep_pos, keep_neg = self.mine(sim, labels, reference_labels)
        valid = keep_pos.any(dim=1) & keep_neg.any(dim=1)
        pos_term = _log1p_sum_exp(-self.pos_weight * (sim - self.thresh), keep_pos) / self.pos_weight
        neg_term = _log1p_sum_exp(self.neg_weight * (sim - self.thresh), keep_neg) / self.neg_weight
        per_anchor = torch.where(valid, pos_term + neg_term, torch.zeros_like(pos_term))
        return per_anchor.sum() / max(len(labels), 1) + self.zero(embeddings)
