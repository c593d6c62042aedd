"""Embedding-space distances: π_intra, π_inter and their ratio (cosine distance 1 − cos).

Every mean of pairwise cosine distances over distinct pairs is computed in
closed form from the sum of the unit vectors, per class (O(n·D), never n × n):
Σ_{i≠j} ⟨x̂_i, x̂_j⟩ = |Σ_i x̂_i|² − Σ_i |x̂_i|². A zero vector counts as
cosine 0 to everything (distance 1); scipy would give NaN there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _mean_pairwise_cosine_distance(unit: torch.Tensor) -> torch.Tensor:
    n = unit.shape[0]
    total = unit.sum(dim=0)
    off_diagonal = (total * total).sum() - (unit * unit).sum()
    return 1.0 - off_diagonal / (n * (n - 1))


def intra_class_distance(x: torch.Tensor, class_ids: torch.Tensor) -> float | None:
    """Mean over classes with ≥ 2 samples of their mean pairwise cosine distance; None if no such class."""
    unit = F.normalize(x.to(torch.float64), dim=1)
    order = torch.argsort(class_ids, stable=True)
    counts = torch.bincount(class_ids).tolist()
    per_class, start = [], 0
    for c in counts:
        if c >= 2:
            per_class.append(_mean_pairwise_cosine_distance(unit[order[start : start + c]]))
        start += c
    if not per_class:
        return None
    return float(torch.stack(per_class).mean())


def class_centroids(x: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
    """Mean feature of every class (C × D, float64)."""
    counts = torch.bincount(class_ids).to(torch.float64)
    sums = torch.zeros(counts.numel(), x.shape[1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, class_ids, x.to(torch.float64))
    return sums / counts.unsqueeze(1)


def inter_class_distance(x: torch.Tensor, class_ids: torch.Tensor) -> float | None:
    """Mean pairwise cosine distance between the class centroids; None with fewer than 2 classes."""
    centroids = class_centroids(x, class_ids)
    if centroids.shape[0] < 2:
        return None
    return float(_mean_pairwise_cosine_distance(F.normalize(centroids, dim=1)))
