"""Per-query retrieval results: what each query retrieves, not only how much on average.

:func:`query_results` searches a set against itself with the evaluation's exact kNN pass
(:func:`engine.metrics.neighbours.search_blocks`: a query's own row excluded by index,
ties to the lower index) and keeps, for every query:

* its k nearest neighbours, their true distances and whether each shares its class;
* the rank (1-based, over the whole set) of its first same-class neighbour, counted
  exactly past the searched depth as ``mean_reciprocal_rank`` counts it (0: the query's
  class has no other sample);
* its AP of MAP@R (Musgrave et al. 2020): (1/R_q)·Σ_{i≤R_q} rel_i·P@i, NaN when R_q = 0.

The relevance rows, the AP numerators (:func:`engine.metrics.retrieval.precision_gain`)
and the first-hit ranks are the ones :func:`engine.metrics.retrieval.retrieval_pass`
computes, so the means are the evaluation's: ``recall_at_1`` is ``e_recall@1`` (a
singleton query is a miss) and ``map_at_r`` is ``map_at_r`` (over the queries with
R_q ≥ 1), the same floats on the same device. Memory is the evaluation's: one block of
distances at a time (~2^26 entries) plus O(N·k) results.

From these, :meth:`QueryResults.per_class` gives each class's size and recall@1, and
:meth:`QueryResults.confused_pairs` the pairs of classes whose samples most often appear
among each other's k nearest neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.metrics.neighbours import prepare, search_blocks
from engine.metrics.retrieval import first_hit_ranks, member_table, precision_gain


@dataclass
class QueryResults:
    """One row per query (the rows of the searched set, in order)."""

    neighbours: np.ndarray  # N × k int64: rows of the k nearest other samples, nearest first
    distances: np.ndarray  # N × k float32: their distances (Euclidean, or 1 − cosine similarity)
    correct: np.ndarray  # N × k bool: the neighbour shares the query's class
    first_hit: np.ndarray  # N int64: rank of the first same-class sample; 0: none exists
    average_precision: np.ndarray  # N float64: AP of MAP@R; NaN when R_q = 0
    relevant: np.ndarray  # N int64: R_q, the other samples of the query's class
    class_index: np.ndarray  # N int64: position of the query's label in `classes`
    classes: np.ndarray  # the distinct labels, sorted
    metric: str
    recall_at_1: float  # e_recall@1 (c_recall@1 for cosine): hit rate at rank 1 over every query
    map_at_r: float  # MAP@R over the queries with R_q ≥ 1 (NaN when there are none)

    @property
    def k(self) -> int:
        return self.neighbours.shape[1]

    def per_class(self) -> tuple[np.ndarray, np.ndarray]:
        """(size, recall@1) of every class of :attr:`classes`, in that order."""
        sizes = np.bincount(self.class_index, minlength=len(self.classes))
        hits = np.bincount(self.class_index, weights=self.correct[:, 0], minlength=len(self.classes))
        return sizes, hits / np.maximum(sizes, 1)

    def confused_pairs(self, top: int = 10) -> list[tuple[int, int, int]]:
        """The *top* unordered class pairs (positions in :attr:`classes`, lower first) by how often a sample of one
        is among the k nearest neighbours of a sample of the other: ``(a, b, count)``, most frequent first, ties by
        class position."""
        wrong = ~self.correct
        if not wrong.any():
            return []
        query_class = np.broadcast_to(self.class_index[:, None], wrong.shape)[wrong]
        neighbour_class = self.class_index[self.neighbours][wrong]
        low, high = np.minimum(query_class, neighbour_class), np.maximum(query_class, neighbour_class)
        codes, counts = np.unique(low * len(self.classes) + high, return_counts=True)
        order = np.lexsort((codes, -counts))[:top]
        return [(int(codes[i] // len(self.classes)), int(codes[i] % len(self.classes)), int(counts[i])) for i in order]

    def worst(self, count: int | None = None) -> np.ndarray:
        """Query rows from the worst: lowest AP, then deepest first hit, then row; queries without a same-class
        sample (no AP) come last."""
        ap = np.where(np.isnan(self.average_precision), np.inf, self.average_precision)
        order = np.lexsort((np.arange(len(ap)), -self.first_hit, ap))
        return order if count is None else order[:count]


def query_results(
    embeddings: Any,
    labels: Any,
    *,
    k: int = 10,
    metric: str = "euclidean",
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
) -> QueryResults:
    """Per-query results of the self-search of *embeddings* (N × D) with *labels* (N); see the module doc.

    *k* must be in 1..N−1. *device* (default: the embeddings' device, else the CPU) is where the search runs.
    """
    x = embeddings.detach() if isinstance(embeddings, torch.Tensor) else torch.as_tensor(np.asarray(embeddings))
    x = x.to(device=torch.device(device) if device is not None else x.device, dtype=torch.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be N x D, got shape {tuple(x.shape)}")
    n = x.shape[0]
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"got {n} embeddings but labels of shape {labels.shape}")
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in 1..N-1 = 1..{n - 1}, got {k}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("embeddings contain NaN or Inf")
    classes, class_index = np.unique(labels, return_inverse=True)
    class_index = class_index.ravel().astype(np.int64)
    device = x.device
    ids = torch.as_tensor(class_index, device=device)
    own = torch.arange(n, device=device)
    r = torch.bincount(ids, minlength=len(classes))[ids] - 1  # R_q
    depth = max(k, min(int(r.max()), n - 1))  # deep enough for the top k and for every query's R_q
    members = member_table(ids, ids, own)
    prepared = prepare(x, metric)
    ranks = torch.arange(1, depth + 1, device=device, dtype=torch.float64)

    neighbours = torch.empty(n, k, dtype=torch.int64, device=device)
    distances = torch.empty(n, k, dtype=torch.float32, device=device)
    correct = torch.empty(n, k, dtype=torch.bool, device=device)
    first_hit = torch.zeros(n, dtype=torch.int64, device=device)
    ap = torch.zeros(n, dtype=torch.float64, device=device)
    with torch.no_grad():
        for start, idx, dist in search_blocks(x, x, depth, metric=metric, self_index=own, chunk_size=chunk_size):
            stop = start + idx.shape[0]
            qc, rq = ids[start:stop], r[start:stop]
            rel = ids[idx] == qc.unsqueeze(1)
            gain = precision_gain(rel.to(torch.float64), ranks)
            last = (rq.clamp(min=1, max=depth) - 1).unsqueeze(1)
            ap[start:stop] = gain.gather(1, last).squeeze(1) / rq.clamp(min=1)
            any_hit = rel.any(dim=1)
            first_hit[start:stop] = torch.where(any_hit, torch.argmax(rel.to(torch.uint8), dim=1) + 1, 0)
            beyond = torch.nonzero(~any_hit & (rq >= 1)).flatten()
            if beyond.numel():
                mem = members[start:stop][beyond] if members is not None else None
                first_hit[start + beyond] = first_hit_ranks(dist[beyond], qc[beyond], ids, mem)
            top = idx[:, :k]
            neighbours[start:stop], correct[start:stop] = top, rel[:, :k]
            # true distances of the k found, from the vectors (the ranking values omit |q|²)
            q, g = prepared[start:stop].unsqueeze(1), prepared[top]
            if metric == "euclidean":
                distances[start:stop] = torch.linalg.vector_norm(q - g, dim=2)
            else:
                distances[start:stop] = 1.0 - (q * g).sum(dim=2)
    counted = r >= 1
    recall_at_1 = float(correct[:, 0].to(torch.float64).mean())
    map_at_r = float(ap[counted].mean()) if bool(counted.any()) else float("nan")
    ap = torch.where(counted, ap, torch.full_like(ap, float("nan")))
    return QueryResults(
        neighbours=neighbours.cpu().numpy(), distances=distances.cpu().numpy(), correct=correct.cpu().numpy(),
        first_hit=first_hit.cpu().numpy(), average_precision=ap.cpu().numpy(), relevant=r.cpu().numpy(),
        class_index=class_index, classes=classes, metric=metric, recall_at_1=recall_at_1, map_at_r=map_at_r,
    )
