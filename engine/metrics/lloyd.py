"""k-means in torch: k-means++ seeding, Lloyd iterations, nearest-centroid assignment.

Deterministic for a given seed and device: the random draws come from a CPU
``torch.Generator`` seeded with *seed* (so they do not depend on the device),
ties in the assignment go to the lower centroid index, and an empty cluster is
re-seeded at the point farthest from its centroid (the farthest first, ties by
the lower point index; several empty clusters take distinct points).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.metrics.neighbours import DEFAULT_BLOCK_ELEMENTS

DEFAULT_ITERATIONS = 20


def assign(
    x: torch.Tensor, centroids: torch.Tensor, *, metric: str = "euclidean", chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every row of *x*: (cluster ids int64, squared distances).

    ``metric="cosine"`` ranks by inner product with the L2-normalised centroids
    (the second tensor is then the inner product). Blocked over rows of *x*.
    """
    n, k = x.shape[0], centroids.shape[0]
    if chunk_size is None:
        chunk_size = max(1, min(65536, DEFAULT_BLOCK_ELEMENTS // max(1, k)))
    ids = torch.empty(n, dtype=torch.int64, device=x.device)
    score = torch.empty(n, dtype=x.dtype, device=x.device)
    if metric == "cosine":
        c = F.normalize(centroids, dim=1)
        for s in range(0, n, chunk_size):
            best, ids[s : s + chunk_size] = (x[s : s + chunk_size] @ c.T).max(dim=1)
            score[s : s + chunk_size] = best
        return ids, score
    if metric != "euclidean":
        raise ValueError(f"unknown k-means assignment metric {metric!r}; allowed: euclidean, cosine")
    c_sq = (centroids * centroids).sum(dim=1)
    for s in range(0, n, chunk_size):
        xb = x[s : s + chunk_size]
        d = (xb @ centroids.T).mul_(-2.0).add_(c_sq.unsqueeze(0))
        best, ids[s : s + chunk_size] = d.min(dim=1)  # first index among equal minima
        score[s : s + chunk_size] = (best + (xb * xb).sum(dim=1)).clamp_min(0.0)
    return ids, score


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of k seed points by D² sampling (k-means++)."""
    n = x.shape[0]
    chosen = torch.empty(k, dtype=torch.int64)
    first = int(torch.randint(n, (1,), generator=generator))
    chosen[0] = first
    min_d = ((x - x[first]) ** 2).sum(dim=1).to(torch.float64)
    for j in range(1, k):
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        cum = torch.cumsum(min_d, dim=0)
        total = float(cum[-1])
        if total > 0:
            pick = int(torch.searchsorted(cum, torch.tensor([u * total], dtype=torch.float64, device=x.device)))
            pick = min(pick, n - 1)
        else:  # every point already coincides with a seed
            pick = min(int(u * n), n - 1)
        chosen[j] = pick
        min_d = torch.minimum(min_d, ((x - x[pick]) ** 2).sum(dim=1).to(torch.float64))
    return chosen


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    iterations: int = DEFAULT_ITERATIONS,
    chunk_size: int | None = None,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean k-means of the rows of *x*: (centroids k × D, cluster of every point).

    k-means++ seeding from ``torch.Generator().manual_seed(seed)`` (or the given
    *init* centroids), then at most *iterations* Lloyd steps (stopping early once
    the assignment is stable); the returned clusters are the nearest final
    centroids. Accepts numpy arrays.
    """
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"k-means input must be N x D, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..N = 1..{n}, got {k}")
    if init is not None:
        centroids = torch.as_tensor(init).to(device=x.device, dtype=x.dtype).clone()
        if centroids.shape != (k, x.shape[1]):
            raise ValueError(f"init must be k x D = {k} x {x.shape[1]}, got {tuple(centroids.shape)}")
    else:
        generator = torch.Generator().manual_seed(int(seed))
        centroids = x[kmeans_plus_plus(x, k, generator).to(x.device)].clone()

    previous = None
    for _ in range(iterations):
        ids, dist = assign(x, centroids, chunk_size=chunk_size)
        sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
        sums.index_add_(0, ids, x.to(torch.float64))
        sizes = torch.bincount(ids, minlength=k)
        empty = torch.nonzero(sizes == 0).flatten()
        if previous is not None and empty.numel() == 0 and torch.equal(ids, previous):
            break  # converged: the centroids would not move
        centroids = (sums / sizes.clamp_min(1).unsqueeze(1).to(torch.float64)).to(x.dtype)
        if empty.numel():
            order = torch.sort(dist, descending=True, stable=True).indices
            centroids[empty] = x[order[: empty.numel()]]
        previous = ids
    ids, _ = assign(x, centroids, chunk_size=chunk_size)
    return centroids, ids
