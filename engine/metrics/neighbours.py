"""Exact k-nearest-neighbour search of a set against itself, blocked over queries.

Each block of query rows is compared with the whole gallery (block × N distances,
never N × N), the query's own entry is masked *by index* before the top-k, and
ties are broken by the lower gallery index, so the result is deterministic and
independent of the block size.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

# Distance entries held at once per block (float32: 4 bytes each, so ~256 MB).
DEFAULT_BLOCK_ELEMENTS = 1 << 26
KNN_METRICS = ("euclidean", "cosine")


def auto_chunk_size(n_gallery: int, budget: int = DEFAULT_BLOCK_ELEMENTS) -> int:
    """Query rows per block so that one block of distances has about *budget* entries."""
    return max(1, min(4096, budget // max(1, n_gallery)))


def _sorted_by_value_then_index(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Reorder each row's (value, index) pairs lexicographically; returns the indices."""
    idx, order = torch.sort(idx, dim=1)
    values = torch.gather(values, 1, order)
    _, order = torch.sort(values, dim=1, stable=True)
    return torch.gather(idx, 1, order)


def knn_blocks(
    x: torch.Tensor, k: int, *, metric: str = "euclidean", chunk_size: int | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first query row, indices block × k) of the k nearest other samples of every sample.

    *x* (N × D) is searched against itself; with ``metric="cosine"`` the rows are
    L2-normalised and the ranking is by inner product. Requires 1 ≤ k ≤ N − 1.
    Neighbours are ordered by distance, ties by the lower index.
    """
    if metric not in KNN_METRICS:
        raise ValueError(f"unknown kNN metric {metric!r}; allowed: {', '.join(KNN_METRICS)}")
    if x.ndim != 2:
        raise ValueError(f"embeddings must be N x D, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in 1..N-1 = 1..{n - 1}, got {k}")
    if chunk_size is None:
        chunk_size = auto_chunk_size(n)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    if metric == "cosine":
        x = F.normalize(x, dim=1)
        offset = None
    else:
        offset = (x * x).sum(dim=1)  # |g|²; |q|² is constant per row and does not change the ranking
    take = k + 1 if k < n - 1 else k  # one more to detect a tie at the k-th place

    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        rows = torch.arange(stop - start, device=x.device)
        dist = x[start:stop] @ x.T  # similarities, turned into distances in place
        if offset is not None:
            dist.mul_(-2.0).add_(offset.unsqueeze(0))
        else:
            dist.neg_()
        dist[rows, rows + start] = float("inf")  # the query itself, by index

        values, idx = torch.topk(dist, take, dim=1, largest=False, sorted=True)
        if take > k:
            tied = values[:, k - 1] == values[:, k]
            values, idx = values[:, :k], idx[:, :k]
            out = _sorted_by_value_then_index(values, idx)
            if bool(tied.any()):
                # which of the equal candidates makes the cut depends on topk's internals: sort those rows fully
                _, full = torch.sort(dist[tied], dim=1, stable=True)
                out[tied] = full[:, :k]
        else:
            out = _sorted_by_value_then_index(values, idx)
        yield start, out


def knn(x: torch.Tensor, k: int, *, metric: str = "euclidean", chunk_size: int | None = None) -> torch.Tensor:
    """Indices (N × k, int64) of the k nearest other samples of every row of *x* (self excluded by index)."""
    return torch.cat([blk for _, blk in knn_blocks(x, k, metric=metric, chunk_size=chunk_size)], dim=0)
