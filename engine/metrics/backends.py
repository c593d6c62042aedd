"""Backends of the kNN search and the k-means: torch (CPU or GPU) and faiss (CPU, GPU indexes with faiss-gpu).

``backend="auto"`` picks torch: on a CUDA device (blocked matmul + top-k) and, as
measured, on the CPU too, where this package's torch path (shallow top-k through
segment minima, first-hit ranks, candidate-list k-means) beat faiss-cpu's flat index
and k-means by ~1.8× on the SOP-scale suite (bench/eval.py at N = 60,502, 1 thread:
19 vs 35 CPU-seconds; the k-means alone 6 vs 19).
Set :data:`AUTO_CPU` to 'faiss' to make auto pick faiss on the CPU (when importable).
``backend="faiss"`` asks for faiss explicitly.

The faiss path uses exact indexes only (``IndexFlatL2``/``IndexFlatIP``, their GPU
versions when ``faiss.get_num_gpus() > 0`` and the work is on a CUDA device) and
gives the torch path's answer: it searches k + 1 (+1 more when the query is a
gallery row), removes the query's own row *by index*, re-sorts the candidates by
(distance, index), and hands every row whose k-th and (k+1)-th candidates tie (where
faiss's choice among equal distances is arbitrary) to the torch search, which sorts
such rows fully. Its k-means is ``faiss.Kmeans`` with the original's settings (no
subsampling: min/max points per centroid 1 and 1e9), ``niter`` iterations, started
from the same k-means++ centroids as the torch k-means; the two still differ
slightly (faiss splits a large cluster for an empty one, torch re-seeds it at the
farthest point; float rounding), so nmi/f1 can differ a little between backends.

faiss is imported lazily, on first use only. It ships its own OpenMP runtime beside
torch's: importing both in one process works (GNU libgomp in both wheels); faiss's
thread count is set to torch's (``torch.get_num_threads()``) before each call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from engine.metrics.neighbours import auto_chunk_size, prepare, search_blocks

BACKENDS = ("auto", "torch", "faiss")
AUTO_CPU = "torch"  # what 'auto' picks on the CPU: 'torch' (measured faster) or 'faiss' (when importable)
FAISS_GPU_MAX_K = 2048  # faiss GPU flat indexes accept k ≤ 2048

_faiss: Any = None


def faiss_module() -> Any | None:
    """The faiss module, or None when it cannot be imported."""
    global _faiss
    if _faiss is None:
        try:
            import faiss
        except ImportError:  # an optional extra: dmltui[faiss] or dmltui[gpu]
            _faiss = False
        else:
            _faiss = faiss
    return _faiss or None


def faiss_gpus() -> int:
    faiss = faiss_module()
    if faiss is None or not hasattr(faiss, "get_num_gpus"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # pragma: no cover - a CPU-only build without the symbol
        return 0


def resolve_backend(backend: str, device: torch.device) -> str:
    """'torch' or 'faiss' for *backend* ('auto', 'torch', 'faiss') and the device the work runs on."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown metrics backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cuda" or AUTO_CPU == "torch":
            return "torch"
        return "faiss" if faiss_module() is not None else "torch"
    if backend == "faiss" and faiss_module() is None:
        raise ValueError("eval.backend='faiss' needs faiss: install the extra dmltui[faiss] (faiss-cpu) or dmltui[gpu] "
                         "(faiss-gpu), e.g. `uv sync --extra gpu --no-dev`; or use eval.backend='torch'")
    return backend


def _numpy32(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


def _sync_threads(faiss: Any) -> None:
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))


def _flat_index(faiss: Any, dim: int, metric: str, on_gpu: bool) -> Any:
    if on_gpu:
        res = faiss.StandardGpuResources()
        cls = faiss.GpuIndexFlatL2 if metric == "euclidean" else faiss.GpuIndexFlatIP
        index = cls(res, dim)
        index._dmltui_res = res  # keep the resources alive with the index
        return index
    return faiss.IndexFlatL2(dim) if metric == "euclidean" else faiss.IndexFlatIP(dim)


def _sort_candidates(values: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's (value, index) pairs sorted lexicographically: (values, indices)."""
    idx, order = torch.sort(idx, dim=1)
    values = torch.gather(values, 1, order)
    values, order = torch.sort(values, dim=1, stable=True)
    return values, torch.gather(idx, 1, order)


def faiss_search_blocks(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    *,
    metric: str = "euclidean",
    self_index: torch.Tensor | None = None,
    chunk_size: int | None = None,
    on_gpu: bool = False,
) -> Iterator[tuple[int, torch.Tensor, None]]:
    """Like :func:`engine.metrics.neighbours.search_blocks`, with a faiss flat index; yields no distance block.

    Indices come back on the CPU.
    """
    faiss = faiss_module()
    if faiss is None:
        raise ValueError("eval.backend='faiss' needs faiss: install the extra dmltui[faiss] (faiss-cpu) or dmltui[gpu] "
                         "(faiss-gpu), e.g. `uv sync --extra gpu --no-dev`; or use eval.backend='torch'")
    _sync_threads(faiss)
    q = prepare(query.detach().to("cpu", torch.float32), metric)
    g = prepare(gallery.detach().to("cpu", torch.float32), metric)
    n_q, n_g = q.shape[0], g.shape[0]
    own_all = None
    if self_index is not None:
        own_all = self_index.to("cpu")
        if not bool((own_all >= 0).any()):
            own_all = None
    limit = n_g - (1 if own_all is not None else 0)
    if not 1 <= k <= limit:
        raise ValueError(f"k must be in 1..{limit}, got {k}")
    take = min(k + 1 + (1 if own_all is not None else 0), n_g)
    on_gpu = on_gpu and take <= FAISS_GPU_MAX_K and faiss_gpus() > 0
    index = _flat_index(faiss, q.shape[1], metric, on_gpu)
    index.add(_numpy32(g))
    if chunk_size is None:
        chunk_size = max(auto_chunk_size(n_g), 1024)
    qn = _numpy32(q)
    sentinel = n_g  # sorts after every real index

    for start in range(0, n_q, chunk_size):
        stop = min(n_q, start + chunk_size)
        dist_np, idx_np = index.search(qn[start:stop], take)
        values = torch.from_numpy(dist_np)
        idx = torch.from_numpy(idx_np).to(torch.int64)
        if metric == "cosine":
            values = values.neg()  # inner products, larger first → distances, smaller first
        bad = idx < 0  # padding (not expected with take ≤ G)
        if own_all is not None:
            bad |= idx == own_all[start:stop].unsqueeze(1)
        if bool(bad.any()):
            values = values.masked_fill(bad, float("inf"))
            idx = idx.masked_fill(bad, sentinel)
        values, idx = _sort_candidates(values, idx)
        out = idx[:, :k].clone()
        if idx.shape[1] > k:
            tied = values[:, k - 1] == values[:, k]
            rows = torch.nonzero(tied).flatten()
            if rows.numel():
                own = own_all[start:stop][rows] if own_all is not None else None
                exact = [blk for _, blk, _ in search_blocks(q[start:stop][rows], g, k, metric=metric,
                                                              self_index=own, prepared=True)]
                out[rows] = torch.cat(exact)
        yield start, out, None


def faiss_kmeans(
    x: torch.Tensor, k: int, *, seed: int, iterations: int, init: torch.Tensor, on_gpu: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """faiss k-means from *init* centroids: (centroids k × D, nearest final centroid of every row), on the CPU."""
    faiss = faiss_module()
    if faiss is None:
        raise ValueError("eval.backend='faiss' needs faiss: install the extra dmltui[faiss] (faiss-cpu) or dmltui[gpu] "
                         "(faiss-gpu), e.g. `uv sync --extra gpu --no-dev`; or use eval.backend='torch'")
    _sync_threads(faiss)
    xn = _numpy32(x)
    gpu = on_gpu and faiss_gpus() > 0
    km = faiss.Kmeans(
        xn.shape[1], int(k), niter=int(iterations), seed=int(seed), min_points_per_centroid=1,
        max_points_per_centroid=1_000_000_000, verbose=False, gpu=bool(gpu),
    )
    if iterations > 0:
        km.train(xn, init_centroids=_numpy32(init))
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    else:
        centroids = _numpy32(init)
    index = _flat_index(faiss, xn.shape[1], "euclidean", gpu)
    index.add(centroids)
    _, ids = index.search(xn, 1)
    return torch.from_numpy(centroids.copy()), torch.from_numpy(ids[:, 0].astype(np.int64))
