"""FastAP (Cakir et al., "Deep Metric Learning to Rank", CVPR 2019).

Average precision of every anchor's ranking, made differentiable by soft histogram binning
of distances. With x̂ the L2-normalised embeddings, the squared distances
d = ‖x̂_i − x̂_j‖² ∈ [0, 4] are spread linearly over L + 1 bin centres z_l = l·Δ (Δ = 4/L),
each bin receiving max(0, 1 − |d − z_l|/Δ). Per anchor i, with h⁺_l and h⁻_l the binned
counts of its positives (other samples of its class) and negatives, H⁺ and H their
cumulative sums (H over h⁺ + h⁻) and N⁺ its number of positives::

    FastAP_i = 1/N⁺ Σ_l h⁺_l H⁺_l / H_l          (terms with H_l = 0 are 0)
    L        = mean of (1 − FastAP_i) over the anchors with N⁺ ≥ 1   (L = 10 bins; 0 without such anchors)

as the authors' code (10 bins). Each distance only touches its two neighbouring bins, so
the histograms are two scatter-adds instead of a pairs × bins matrix. Against a reference
set (``loss.xbm``), the positives and negatives range over the references.
"""

from __future__ import annotations

import torch

from engine.losses import LOSSES
from engine.losses.base import DMLLoss, anchor_mean, cosines_against, reference_masks
from engine.miners import Miner


@LOSSES.register("fastap")
class FastAPLoss(DMLLoss):
    name = "fastap"
    REQUIRES_MINER = False
    REFERENCES = True

    def __init__(self, num_classes: int, embed_dim: int, miner: Miner | None = None, *, num_bins: int = 10):
        super().__init__(num_classes, embed_dim, miner)
        if num_bins < 1:
            raise ValueError("fastap needs num_bins >= 1")
        self.num_bins = num_bins

    def histograms(self, distances: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h⁺, h⁻), each (B, L + 1): the linear assignment of every anchor's distances to the bin centres."""
        position = distances * (self.num_bins / 4.0)
        lower = position.detach().floor().clamp_(0, self.num_bins - 1).long()
        upper_share = position - lower.to(position.dtype)
        shape = (len(distances), self.num_bins + 1)

        def binned(weights: torch.Tensor) -> torch.Tensor:
            return (distances.new_zeros(shape).scatter_add(1, lower, weights * (1.0 - upper_share))
                    .scatter_add(1, lower + 1, weights * upper_share))

        return binned(positives.to(distances.dtype)), binned(negatives.to(distances.dtype))

    def compute_against(self, embeddings, labels, references, reference_labels):
        positives, negatives = reference_masks(labels, reference_labels)
        distances = (2.0 - 2.0 * cosines_against(embeddings, references)).clamp(0.0, 4.0)
        h_pos, h_neg = self.histograms(distances, positives, negatives)
        cumulative = torch.cumsum(h_pos + h_neg, dim=1)
        precision = h_pos * torch.cumsum(h_pos, dim=1) / torch.where(cumulative > 0, cumulative, 1.0)
        count = positives.sum(1)
        fast_ap = precision.sum(1) / count.clamp_min(1)
        return anchor_mean(1.0 - fast_ap, count > 0) + self.zero(embeddings)
