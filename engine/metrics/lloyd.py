"""k-means in torch: k-means++ seeding, Lloyd iterations, nearest-centroid assignment.

Deterministic for a given seed and device: the random draws come from a CPU
``torch.Generator`` seeded with *seed* (so they do not depend on the device),
ties in the assignment go to the lower centroid index, and an empty cluster is
re-seeded at the point farthest from its centroid (the farthest first, ties by
the lower point index; several empty clusters take distinct points).

Speed at large k (SOP: k = 11,316 over 60,502 points): k-means++ draws its seeds in
batches by rejection sampling (exact D² sampling; one blocked matmul per batch keeps
the distances to the seeds current and every point's nearest seed, which is the
first assignment), and Lloyd keeps each point's nearest centroids so that after a
step only the centroids that moved are compared with every point (see
``_Candidates``; the one full pass, after the first step, selects the lists through
segment minima as the kNN search does). The assignments are those of plain Lloyd;
memory stays at one block of ~2^26 distances plus N × 8 lists.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.metrics.neighbours import DEFAULT_BLOCK_ELEMENTS, segment_width, smallest

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


# ---------------------------------------------------------------------------- candidate lists
#
# Every point keeps its T nearest centroids (ids and ranking distances |c|² − 2 x·c, sorted
# by distance, ties by the lower id) and a bound: every centroid outside the list is at
# least `bound` away. When only some centroids move, only their columns are recomputed;
# a point whose best listed distance is not strictly below its bound is recomputed in
# full. The assignment is therefore the exact nearest centroid (ties: the lower id), as a
# full pass would give, at a fraction of the cost once few clusters still change.

CANDIDATES = 8
PLAIN_LLOYD_MAX = 1 << 22  # n × k up to this: full assignment passes (the same result, fewer small operations)


def _rank_distances(x: torch.Tensor, centroids: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    return (x @ centroids.T).mul_(-2.0).add_(c_sq.unsqueeze(0))


def _top(
    d: torch.Tensor, prefix: torch.Tensor | None, tail: torch.Tensor | None, t: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The t smallest of each row (ascending) with their ids, and the (t+1)-th value (inf if none).

    Column ids: with no *prefix*, the column index; else the first columns are the
    per-row ids *prefix* (rows × p) and the rest the shared ids *tail*. Only the first
    entry's tie order matters (it is the assignment): where the two smallest values
    are equal, the row's equal minima are put in id order.
    """
    take = min(t + 1, d.shape[1])
    vals, pos = torch.topk(d, take, dim=1, largest=False, sorted=True)
    if prefix is None:
        cand = pos
    else:
        p = prefix.shape[1]
        cand = torch.where(pos < p, torch.gather(prefix, 1, pos.clamp(max=p - 1)), tail[(pos - p).clamp(min=0)])
    return _split(vals, cand, t)


def _split(vals: torch.Tensor, cand: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_top`'s result from the sorted smallest min(t + 1, columns) values of each row and their ids."""
    take = vals.shape[1]
    if take > t:
        bound = vals[:, t].clone()
        vals, cand = vals[:, :t].contiguous(), cand[:, :t].contiguous()
    else:
        bound = torch.full_like(vals[:, 0], float("inf"))
    if t > 1:
        tied = torch.nonzero(vals[:, 0] == vals[:, 1]).flatten()
        if tied.numel():
            vals[tied], cand[tied] = _resort(vals[tied], cand[tied])
    return vals, cand, bound


class _Candidates:
    def __init__(self, n: int, t: int, device: torch.device, dtype: torch.dtype):
        self.t = t
        self.dist = torch.full((n, t), float("inf"), device=device, dtype=dtype)
        self.ids = torch.zeros((n, t), device=device, dtype=torch.int64)
        self.bound = torch.full((n,), float("inf"), device=device, dtype=dtype)

    def full(self, x: torch.Tensor, centroids: torch.Tensor, rows: torch.Tensor | None, chunk: int) -> None:
        """Recompute the lists of *rows* (all when None) against every centroid.

        The distances of a block of rows go to one reused buffer; on many centroids the
        smallest t + 1 are read through segment minima (as the kNN search does).
        """
        k = centroids.shape[0]
        c_sq = (centroids * centroids).sum(dim=1)
        take = min(self.t + 1, k)
        segment = segment_width(k, take)
        width = -(-k // segment) * segment if segment else k
        if width > k:  # padding centroids at +inf (offset +inf, product 0)
            centroids = torch.cat([centroids, centroids.new_zeros(width - k, centroids.shape[1])])
            c_sq = torch.cat([c_sq, c_sq.new_full((width - k,), float("inf"))])
        n = x.shape[0] if rows is None else rows.numel()
        buffer = torch.empty(min(chunk, n), width, dtype=x.dtype, device=x.device)
        for s in range(0, n, chunk):
            sel = slice(s, min(n, s + chunk)) if rows is None else rows[s : s + chunk]
            xb = x[sel]
            padded = torch.addmm(c_sq.unsqueeze(0).expand(xb.shape[0], -1), xb, centroids.T, alpha=-2.0,
                                 out=buffer[: xb.shape[0]])
            d = padded[:, :k]
            vals, ids = smallest(padded, k, take, segment)
            vals, ids, bound = _split(vals, ids, self.t)
            tied = vals[:, 0] == bound  # more equal minima than the list holds: take the lowest ids
            if bool(tied.any()):
                full_vals, full_ids = torch.sort(d[tied], dim=1, stable=True)
                vals[tied], ids[tied] = full_vals[:, : self.t], full_ids[:, : self.t]
            self.dist[sel], self.ids[sel], self.bound[sel] = vals, ids, bound

    def moved(self, x: torch.Tensor, centroids: torch.Tensor, moved: torch.Tensor, chunk: int) -> None:
        """Update the lists after the centroids *moved* (ids) changed; rows left unsure are recomputed."""
        k = centroids.shape[0]
        is_moved = torch.zeros(k, dtype=torch.bool, device=x.device)
        is_moved[moved] = True
        cm = centroids[moved]
        cm_sq = (cm * cm).sum(dim=1)
        n = x.shape[0]
        step = max(1, chunk * k // max(1, moved.numel() + self.t))
        for s in range(0, n, step):
            e = min(n, s + step)
            fresh = _rank_distances(x[s:e], cm, cm_sq)
            kept = self.dist[s:e].masked_fill(is_moved[self.ids[s:e]], float("inf"))
            vals, cand, bound = _top(torch.cat([kept, fresh], dim=1), self.ids[s:e], moved, self.t)
            self.dist[s:e], self.ids[s:e] = vals, cand
            self.bound[s:e] = torch.minimum(self.bound[s:e], bound)
        unsure = torch.nonzero(~(self.dist[:, 0] < self.bound)).flatten()
        if unsure.numel():
            self.full(x, centroids, unsure, chunk)


def _chunk(k: int, chunk_size: int | None) -> int:
    return chunk_size if chunk_size is not None else max(1, min(65536, DEFAULT_BLOCK_ELEMENTS // max(1, k)))


# ---------------------------------------------------------------------------- k-means++


class _Nearest:
    """Every point's nearest seed while k-means++ draws them: id (position in the seeding) and ranking distance."""

    def __init__(self, n: int, device: torch.device, dtype: torch.dtype):
        self.ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.dist = torch.full((n,), float("inf"), dtype=dtype, device=device)


def _plus_plus(x: torch.Tensor, k: int, generator: torch.Generator, nearest: _Nearest | None = None) -> torch.Tensor:
    """k-means++ seed indices (D² sampling), batched and exact.

    Seeds are drawn in batches: candidates are proposed from the squared distances
    to the seeds of the earlier batches (one blocked matmul per batch keeps those up
    to date) and accepted with probability (distance to every seed so far) / (the
    proposal's distance); that is rejection sampling of the exact D² distribution, so
    the result is a k-means++ seeding, drawn from a CPU generator. *nearest*, when
    given, receives every point's nearest seed (ties: the lower id) on the way, which
    is k-means' first assignment.
    """
    n, dim = x.shape
    chosen: list[int] = []
    x_host = x.detach().to("cpu", torch.float64).numpy()
    x_sq = (x * x).sum(dim=1)
    min_d = torch.full((n,), float("inf"), dtype=torch.float64, device=x.device)
    buffer = torch.empty(0, dtype=x.dtype, device=x.device)
    draws: list[float] = []
    used = 0

    def uniform() -> float:
        nonlocal draws, used
        if used == len(draws):
            draws, used = torch.rand(1024, generator=generator, dtype=torch.float64).tolist(), 0
        used += 1
        return draws[used - 1]

    def refresh(batch: list[int]) -> np.ndarray:
        nonlocal buffer
        seeds = x[torch.as_tensor(batch, device=x.device)]
        s_sq = (seeds * seeds).sum(dim=1)
        b = len(batch)
        step = max(1, DEFAULT_BLOCK_ELEMENTS // b)
        if buffer.numel() < min(n, step) * b:
            buffer = torch.empty(min(n, step) * b, dtype=x.dtype, device=x.device)
        first_id = len(chosen) - b
        for s in range(0, n, step):
            e = min(n, s + step)
            d = torch.addmm(s_sq.unsqueeze(0).expand(e - s, b), x[s:e], seeds.T, alpha=-2.0,
                            out=buffer[: (e - s) * b].view(e - s, b))
            best = d.amin(dim=1)
            min_d[s:e] = torch.minimum(min_d[s:e], (best + x_sq[s:e]).clamp_min(0).to(torch.float64))
            if nearest is not None:  # strictly nearer only: on a tie the earlier (lower) id stays
                closer = torch.nonzero(best < nearest.dist[s:e]).flatten()
                if closer.numel():
                    nearest.ids[s + closer] = d[closer].argmin(dim=1) + first_id  # first of equal minima
                    nearest.dist[s + closer] = best[closer]
        min_d[torch.as_tensor(batch, device=x.device)] = 0.0
        return min_d.cpu().numpy()

    first = int(torch.randint(n, (1,), generator=generator))
    chosen.append(first)
    stale = refresh([first])
    if k == 1:
        return torch.as_tensor(chosen, dtype=torch.int64)
    while len(chosen) < k:
        cum = np.cumsum(stale)
        total = float(cum[-1])
        batch: list[int] = []
        limit = min(k - len(chosen), max(1, min(256, len(chosen))))
        rejected = 0
        seeds = np.empty((limit, dim))  # the batch's seeds so far: seeds[: len(batch)]
        while len(batch) < limit and rejected <= 2 * len(batch) + 8:
            u = uniform()
            if not total > 0:  # every point already coincides with a seed
                pick = min(int(u * n), n - 1)
                seeds[len(batch)] = x_host[pick]
                batch.append(pick)
                continue
            pick = min(int(np.searchsorted(cum, u * total, side="right")), n - 1)
            current = stale[pick]
            if batch:
                current = min(current, float(((seeds[: len(batch)] - x_host[pick]) ** 2).sum(axis=1).min()))
            if current > 0 and uniform() * stale[pick] < current:
                seeds[len(batch)] = x_host[pick]
                batch.append(pick)
            else:
                rejected += 1
        if not batch:
            continue
        chosen.extend(batch)
        stale = refresh(batch)
    return torch.as_tensor(chosen[:k], dtype=torch.int64)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of k seed points by D² sampling (k-means++)."""
    return _plus_plus(torch.as_tensor(x), k, generator)


def kmeans_plus_plus_centroids(x: torch.Tensor, k: int, *, seed: int = 0) -> torch.Tensor:
    """The k-means++ initial centroids (k × D) that :func:`kmeans` starts from for this *seed*."""
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be in 1..N = 1..{x.shape[0]}, got {k}")
    generator = torch.Generator().manual_seed(int(seed))
    return x[_plus_plus(x, k, generator).to(x.device)].clone()


# ---------------------------------------------------------------------------- Lloyd


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
    centroids (ties: the lower centroid index). Each point keeps a short list of its
    nearest centroids, so after a step only the centroids that moved are compared
    with every point; the result is that of plain Lloyd. Accepts numpy arrays.
    """
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"k-means input must be N x D, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..N = 1..{n}, got {k}")
    if n * k <= PLAIN_LLOYD_MAX:  # small problems: fewer, larger operations win
        return _plain_kmeans(x, k, seed=seed, iterations=iterations, chunk_size=chunk_size, init=init)
    chunk = _chunk(k, chunk_size)
    lists = _Candidates(n, min(CANDIDATES, k), x.device, x.dtype)
    if init is not None:
        centroids = torch.as_tensor(init).to(device=x.device, dtype=x.dtype).clone()
        if centroids.shape != (k, x.shape[1]):
            raise ValueError(f"init must be k x D = {k} x {x.shape[1]}, got {tuple(centroids.shape)}")
        lists.full(x, centroids, None, chunk)
        listed = True
        ids, best = lists.ids[:, 0], lists.dist[:, 0]
    else:  # the seeding finds every point's nearest seed; the lists are filled at the first step
        generator = torch.Generator().manual_seed(int(seed))
        nearest = _Nearest(n, x.device, x.dtype)
        centroids = x[_plus_plus(x, k, generator, nearest).to(x.device)].clone()
        listed = False
        ids, best = nearest.ids, nearest.dist

    x_sq = (x * x).sum(dim=1)
    for _ in range(iterations):
        new = _update(x, ids, k, (best + x_sq).clamp_min(0.0))
        moved = torch.nonzero((new != centroids).any(dim=1)).flatten()
        centroids = new
        if moved.numel() == 0:
            break  # converged: the centroids did not move
        if not listed or moved.numel() * 2 > k:
            lists.full(x, centroids, None, chunk)
            listed = True
        else:
            lists.moved(x, centroids, moved, chunk)
        ids, best = lists.ids[:, 0], lists.dist[:, 0]
    return centroids, ids.clone()


def _update(x: torch.Tensor, ids: torch.Tensor, k: int, squared_distances: torch.Tensor) -> torch.Tensor:
    """One Lloyd update: each cluster's mean (accumulated in float64); an empty cluster takes the point farthest
    from its centroid (*squared_distances*), the farthest first, ties by the lower index."""
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, ids, x.to(torch.float64))
    sizes = torch.bincount(ids, minlength=k)
    empty = torch.nonzero(sizes == 0).flatten()
    new = (sums / sizes.clamp_min(1).unsqueeze(1).to(torch.float64)).to(x.dtype)
    if empty.numel():
        order = torch.sort(squared_distances, descending=True, stable=True).indices
        new[empty] = x[order[: empty.numel()]]
    return new


def _resort(vals: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ids, order = torch.sort(ids, dim=1)
    vals = torch.gather(vals, 1, order)
    vals, order = torch.sort(vals, dim=1, stable=True)
    return vals, torch.gather(ids, 1, order)


def _plain_kmeans(
    x: torch.Tensor, k: int, *, seed: int, iterations: int, chunk_size: int | None, init: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd with a full assignment pass per step (for small n × k); same rules and result as :func:`kmeans`."""
    if init is not None:
        centroids = torch.as_tensor(init).to(device=x.device, dtype=x.dtype).clone()
        if centroids.shape != (k, x.shape[1]):
            raise ValueError(f"init must be k x D = {k} x {x.shape[1]}, got {tuple(centroids.shape)}")
    else:
        generator = torch.Generator().manual_seed(int(seed))
        centroids = x[_plus_plus(x, k, generator).to(x.device)].clone()
    ids, dist = assign(x, centroids, chunk_size=chunk_size)
    for _ in range(iterations):
        new = _update(x, ids, k, dist)
        if torch.equal(new, centroids):
            break  # converged: the centroids did not move
        centroids = new
        ids, dist = assign(x, centroids, chunk_size=chunk_size)
    return centroids, ids
