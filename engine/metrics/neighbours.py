"""Exact k-nearest-neighbour search, blocked over queries (torch backend).

Each block of query rows is compared with the whole gallery (block × G distances,
never Q × G), a query's own entry is masked *by index* before the top-k (when the
query is itself a gallery row), and ties are broken by the lower gallery index, so
the result is deterministic and independent of the block size.

Speed on a large gallery (SOP: 60,502 rows) is the matmul's: a block's distances go
to one reused buffer (no fresh quarter-gigabyte allocation per block), and the
shallow top-k that the metrics need (k ≤ ~16) is read from the few segments of 64
columns with the smallest minima instead of a ``torch.topk`` over the whole row
(exact, see :data:`SEGMENT`); :func:`count_before` counts an entry's rank the same
way, comparing only the segments that can hold nearer entries.

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

# The fast top-k: a row's distances are cut into segments of SEGMENT columns and the t segments
# with the smallest minima are searched instead of the whole row. Let v be the t-th smallest
# minimum: at most t − 1 segments have a smaller one and all of them are searched, so every
# entry below v is searched; each searched segment holds an entry ≤ v. Hence the t smallest
# searched entries are, as values, the t smallest of the row, and every entry strictly below
# the t-th of them is among them: exactly what the callers read (the k nearest when the k-th
# and (k+1)-th differ, else a stable sort of the row; a bound and a tie test in k-means), so
# the results equal those of a top-k over the whole row. Rows with a NaN take the whole-row
# top-k. Used when a row has at least SEGMENT_MIN_RATIO · SEGMENT · t columns.
SEGMENT = 64
SEGMENT_MIN_RATIO = 4


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
    queries: torch.Tensor,
    gallery: torch.Tensor,
    offset: torch.Tensor | None,
    self_cols: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ranking distances of prepared query rows to the prepared gallery (block × G).

    Euclidean: |g|² − 2 q·g (the squared distance less |q|²); cosine: −q·g. A query's
    own gallery column (``self_cols`` ≥ 0) is set to +inf. *out*: a contiguous
    block × G buffer to write into (reused buffers spare the allocator's page faults).
    """
    if offset is not None:
        dist = torch.addmm(offset.unsqueeze(0).expand(queries.shape[0], -1), queries, gallery.T, alpha=-2.0, out=out)
    else:
        dist = torch.mm(queries, gallery.T, out=out).neg_()
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
    the one the ranking was read from (own column +inf), for follow-up counts; it is a
    view of a buffer that the next block overwrites.
    Requires 1 ≤ k ≤ G − (1 if any query is in the gallery else 0).

    Selection: on a large gallery (:func:`segment_width`) the top-(k+1) is read from
    the segments of :data:`SEGMENT` columns with the smallest minima (exact, see
    :func:`segment_topk`); otherwise ``torch.topk`` over whole rows. Both give the
    same neighbours.
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
    segment = segment_width(n_g, take)
    width = -(-n_g // segment) * segment if segment else n_g
    if width > n_g:  # pad the gallery to whole segments; the padding columns are set to +inf
        gallery = torch.cat([gallery, gallery.new_zeros(width - n_g, gallery.shape[1])])
        if offset is not None:
            offset = torch.cat([offset, offset.new_zeros(width - n_g)])
    buffer = torch.empty(min(chunk_size, n_q), width, dtype=torch.result_type(query, gallery), device=query.device)

    for start in range(0, n_q, chunk_size):
        stop = min(n_q, start + chunk_size)
        own = self_index[start:stop] if self_index is not None else None
        full = distance_rows(query[start:stop], gallery, offset, own, out=buffer[: stop - start])
        if width > n_g:
            full[:, n_g:] = float("inf")
        dist = full[:, :n_g]
        values, idx = smallest(full, n_g, take, segment)
        if take > k:
            tied = values[:, k - 1] == values[:, k]
            out = _sorted_by_value_then_index(values[:, :k], idx[:, :k])
            if bool(tied.any()):
                # which of the equal candidates makes the cut depends on topk's internals: sort those rows fully
                _, order = torch.sort(dist[tied], dim=1, stable=True)
                out[tied] = order[:, :k]
        else:
            out = _sorted_by_value_then_index(values, idx)
        yield start, out, dist


def segment_width(n_columns: int, take: int) -> int:
    """Columns per segment for a top-*take* over *n_columns* (0: select over whole rows instead)."""
    return SEGMENT if n_columns >= SEGMENT_MIN_RATIO * SEGMENT * take else 0


def segment_topk(full: torch.Tensor, take: int, segment: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The *take* smallest values of each row of *full* (contiguous, width a multiple of *segment*), ascending.

    Returns (values, their column indices, rows to redo); the rows to redo (a NaN in
    the row) hold placeholders for the caller to replace with a whole-row top-k.
    """
    rows, width = full.shape
    minima = full.view(rows, width // segment, segment).amin(dim=2)
    redo = torch.nonzero(torch.isnan(minima).any(dim=1)).flatten()
    seg = torch.topk(minima, take, dim=1, largest=False, sorted=False).indices
    cols = (seg.unsqueeze(2) * segment + torch.arange(segment, device=full.device)).flatten(1)
    values, pos = torch.topk(full.gather(1, cols), take, dim=1, largest=False, sorted=True)
    return values, cols.gather(1, pos), redo


def smallest(full: torch.Tensor, width: int, take: int, segment: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The *take* smallest of the first *width* columns of each row, ascending: (values, column indices).

    With a *segment*, through :func:`segment_topk` (*full* padded to a multiple of it), whole-row top-k
    for the rows it cannot serve; without, a whole-row top-k."""
    if not segment:
        return torch.topk(full[:, :width], take, dim=1, largest=False, sorted=True)
    values, idx, redo = segment_topk(full, take, segment)
    if redo.numel():
        values[redo], idx[redo] = torch.topk(full[redo, :width], take, dim=1, largest=False, sorted=True)
    return values, idx


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


def count_before(dist: torch.Tensor, value: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Per row: the entries below *value*, plus those equal to it in a column before *pos*.

    Only the segments (:data:`SEGMENT` columns) whose minimum
    is not above the row's value are compared entry by entry: few, when the value is
    near the front of the ranking.
    """
    rows, n_g = dist.shape
    segment = SEGMENT
    whole = n_g // segment * segment
    count = torch.zeros(rows, dtype=torch.int64, device=dist.device)
    if whole:
        seg = dist[:, :whole].reshape(rows, whole // segment, segment)
        r, s = torch.nonzero(~(seg.amin(dim=2) > value.unsqueeze(1))).unbind(1)
        if r.numel():
            vals, v = seg[r, s], value[r].unsqueeze(1)
            cols = s.unsqueeze(1) * segment + torch.arange(segment, device=dist.device)
            before = (vals < v) | ((vals == v) & (cols < pos[r].unsqueeze(1)))
            count.index_add_(0, r, before.sum(dim=1))
    if whole < n_g:
        vals, v = dist[:, whole:], value.unsqueeze(1)
        cols = torch.arange(whole, n_g, device=dist.device)
        count += ((vals < v) | ((vals == v) & (cols < pos.unsqueeze(1)))).sum(dim=1)
    return count
