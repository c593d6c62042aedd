"""Exact k-nearest-neighbour search, blocked over queries (torch backend).

Each block of query rows is compared with the whole gallery (block × G distances,
never Q × G), a query's own entry is masked *by index* before the top-k (when the
query is itself a gallery row), and ties are broken by the lower gallery index, so
the result is deterministic and independent of the block size.

``knn``/``knn_blocks`` search a set against itself; :func:`search_blocks` searches
queries against a separate gallery, with ``self_index`` naming, for every query,
its own gallery position (−1: not in the gallery).
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


def _check_metric(metric: str) -> None:
    if metric not in KNN_METRICS:
        raise ValueError(f"unknown kNN metric {metric!r}; allowed: {', '.join(KNN_METRICS)}")


def prepare(x: torch.Tensor, metric: str) -> torch.Tensor:
    """The rows as the search compares them: L2-normalised for ``cosine``, unchanged otherwise."""
    _check_metric(metric)
    return F.normalize(x, dim=1) if metric == "cosine" else x


def gallery_offset(gallery: torch.Tensor, metric: str) -> torch.Tensor | None:
    """|g|² per gallery row for Euclidean ranking (|q|² is constant per row and does not matter)."""
    return (gallery * gallery).sum(dim=1) if metric == "euclidean" else None


def distance_rows(
    queries: torch.Tensor, gallery: torch.Tensor, offset: torch.Tensor | None, self_cols: torch.Tensor | None
) -> torch.Tensor:
    """Ranking distances of prepared query rows to the prepared gallery (block × G).

    Euclidean: |g|² − 2 q·g (the squared distance less |q|²); cosine: −q·g. A query's
    own gallery column (``self_cols`` ≥ 0) is set to +inf.
    """
    if offset is not None:
        dist = torch.addmm(offset.unsqueeze(0).expand(queries.shape[0], -1), queries, gallery.T, alpha=-2.0)
    else:
        dist = torch.mm(queries, gallery.T).neg_()
    if self_cols is not None:
        own = torch.nonzero(self_cols >= 0).flatten()
        if own.numel():
            dist[own, self_cols[own]] = float("inf")
    return dist


def search_blocks(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    *,
    metric: str = "euclidean",
    self_index: torch.Tensor | None = None,
    chunk_size: int | None = None,
    prepared: bool = False,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (first query row, indices block × k, distances block × G) of the k nearest gallery rows.

    Neighbours are ordered by distance, ties by the lower gallery index; a query's own
    gallery row (``self_index``, −1 for none) is never returned. The distance block is
    the one the ranking was read from (own column +inf), for follow-up counts.
    Requires 1 ≤ k ≤ G − (1 if any query is in the gallery else 0).
    """
    _check_metric(metric)
    if query.ndim != 2 or gallery.ndim != 2:
        raise ValueError(f"embeddings must be N x D, got shapes {tuple(query.shape)} and {tuple(gallery.shape)}")
    n_q, n_g = query.shape[0], gallery.shape[0]
    if self_index is not None and not bool((self_index >= 0).any()):
        self_index = None
    limit = n_g - (1 if self_index is not None else 0)
    if not 1 <= k <= limit:
        raise ValueError(f"k must be in 1..{limit}, got {k}")
    if chunk_size is None:
        chunk_size = auto_chunk_size(n_g)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if not prepared:
        query, gallery = prepare(query, metric), prepare(gallery, metric)
    offset = gallery_offset(gallery, metric)
    take = min(k + 1, n_g)  # one more to detect a tie at the k-th place

    for start in range(0, n_q, chunk_size):
        stop = min(n_q, start + chunk_size)
        own = self_index[start:stop] if self_index is not None else None
        dist = distance_rows(query[start:stop], gallery, offset, own)
        values, idx = torch.topk(dist, take, dim=1, largest=False, sorted=True)
        if take > k:
            tied = values[:, k - 1] == values[:, k]
            out = _sorted_by_value_then_index(values[:, :k], idx[:, :k])
            if bool(tied.any()):
                # which of the equal candidates makes the cut depends on topk's internals: sort those rows fully
                _, full = torch.sort(dist[tied], dim=1, stable=True)
                out[tied] = full[:, :k]
        else:
            out = _sorted_by_value_then_index(values, idx)
        yield start, out, dist


def knn_blocks(
    x: torch.Tensor, k: int, *, metric: str = "euclidean", chunk_size: int | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first query row, indices block × k) of the k nearest other samples of every sample.

    *x* (N × D) is searched against itself; with ``metric="cosine"`` the rows are
    L2-normalised and the ranking is by inner product. Requires 1 ≤ k ≤ N − 1.
    Neighbours are ordered by distance, ties by the lower index.
    """
    _check_metric(metric)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be N x D, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in 1..N-1 = 1..{n - 1}, got {k}")
    x = prepare(x, metric)
    own = torch.arange(n, device=x.device)
    for start, idx, _ in search_blocks(x, x, k, metric=metric, self_index=own, chunk_size=chunk_size, prepared=True):
        yield start, idx


def knn(x: torch.Tensor, k: int, *, metric: str = "euclidean", chunk_size: int | None = None) -> torch.Tensor:
    """Indices (N × k, int64) of the k nearest other samples of every row of *x* (self excluded by index)."""
    return torch.cat([blk for _, blk in knn_blocks(x, k, metric=metric, chunk_size=chunk_size)], dim=0)

