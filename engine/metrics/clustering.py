"""Clustering quality: NMI, AMI and the pair-counting F1."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (set explicitly)."""
    return float(normalized_mutual_info_score(np.asarray(labels), np.asarray(clusters), average_method="arithmetic"))


def _pairs(counts: np.ndarray) -> float:
    counts = counts.astype(np.float64)
    return float((counts * (counts - 1.0) / 2.0).sum())


def pair_f1(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Clustering F1 by pair counting.

    TP = Σ_{class,cluster} C(n_{class,cluster}, 2) (pairs together in both);
    precision = TP / Σ_cluster C(n_cluster, 2), recall = TP / Σ_class C(n_class, 2),
    F1 = 2PR/(P+R), and 0 where a ratio is undefined. F1 is symmetric in P and R,
    so which of the two is called precision does not matter (the original swapped
    the names). The contingency table is counted sparsely (only non-empty cells).
    """
    labels = np.asarray(labels).ravel()
    clusters = np.asarray(clusters).ravel()
    if labels.shape != clusters.shape:
        raise ValueError(f"labels and clusters differ in length: {labels.shape[0]} vs {clusters.shape[0]}")
    _, lab = np.unique(labels, return_inverse=True)
    _, clu = np.unique(clusters, return_inverse=True)
    _, cell_counts = np.unique(lab.astype(np.int64) * (int(clu.max(initial=0)) + 1) + clu, return_counts=True)
    tp = _pairs(cell_counts)
    same_class = _pairs(np.bincount(lab))
    same_cluster = _pairs(np.bincount(clu))
    precision = tp / same_cluster if same_cluster > 0 else 0.0
    recall = tp / same_class if same_class > 0 else 0.0
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def ami(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Adjusted mutual information (arithmetic-mean normalisation, set explicitly): NMI corrected for chance."""
    return float(adjusted_mutual_info_score(np.asarray(labels), np.asarray(clusters), average_method="arithmetic"))
