"""Evaluation metrics of embeddings: retrieval (recall@k, mAP, MAP@R, R-precision,
P@1, MRR), clustering (NMI, AMI, F1), embedding-space distances and the ρ spectrum.

Entry points (public, kept stable): :func:`evaluate` ``(embeddings, labels, metrics,
*, query=None, gallery=None, seed=0, device=None, chunk_size=None, backend="auto")``
→ ``{name: float | None}`` (None: could not be computed), and :func:`compute_metrics`
(same arguments) → ``(values, missing)`` with the reason of every missing one;
:func:`check_metric_name` / :func:`list_metrics` for configs. Inputs may be numpy
arrays or tensors (any device). Names follow the original codebase (its
``metrics/``; reference inventory §8.2) plus the ones the field reports today. The
``e_``/un-prefixed metrics use Euclidean distance, the ``c_`` ones L2-normalised
features (inner product).

Metrics added beside the original's (R_q = number of *other* samples of the query's
class; a query with R_q = 0 is left out of these four, as in pytorch-metric-learning):

* ``precision_at_1``: the nearest neighbour shares the query's label (recall@1 over
  the queries with R_q ≥ 1 only).
* ``r_precision``: (#same-class among the R_q nearest) / R_q.
* ``map_at_r``: MAP@R (Musgrave et al. 2020), (1/R_q)·Σ_{i≤R_q} rel_i·P@i: the correct
  version of the original's ``mAP_c`` (kept as is, see below), which divides by the
  class size *including* the query and so scores (f−1)/f for a perfect ranking.
* ``mean_reciprocal_rank``: 1/rank of the first same-class sample, exact over the
  whole gallery: when it is beyond the top-k the pass selects, its rank is counted
  from the query's distance row (samples strictly nearer plus equally near ones of
  lower index), never capped.
* ``ami``: adjusted mutual information (sklearn, ``average_method="arithmetic"``) of
  the same k-means clustering as ``nmi``.
* Each has a ``c_`` (cosine) variant: the same on L2-normalised features, from the
  cosine kNN pass / cosine clustering that the other ``c_`` metrics share.

Query/gallery evaluation (In-Shop style): pass *query* and *gallery*, either as row
selectors of *embeddings* (int indices or boolean masks; rows may be in both, and a
row is never its own neighbour: excluded by index) or as ``(embeddings, labels)``
pairs of two separate sets (then *embeddings* and *labels* are None; nothing is
excluded). The retrieval metrics rank the gallery for every query, with R_q = the
gallery samples of the query's class (its own row excluded) and f_q = R_q + 1 for the
original's mAP variants; recall@k needs k ≤ the gallery rows a query can see. The
clustering, ``dists@`` and ``rho_spectrum`` metrics are computed on the union of the
query and gallery rows (each row once). ``query = gallery = all rows`` is the plain
self-search.

Backends (*backend*, config ``eval.backend``): 'torch' (CPU or GPU) or 'faiss' (exact
flat indexes, faiss GPU indexes when faiss-gpu is installed and the work is on CUDA;
the same neighbours as torch, ties included, and k-means from the same k-means++
centroids); 'auto' picks torch, which measured faster on the CPU too (see
:mod:`engine.metrics.backends`). *device* (default: the embeddings' device) is where
torch works; ``eval.on_gpu`` (legacy ``--evaluate_on_gpu``) moves it to CUDA.

Shared work: one exact kNN pass per space serves every recall, mAP and MAP@R-family
metric of that space: its top-k selection goes as deep as the mAP variants and the
MAP@R family need (the largest class size; 1000/1023 for mAP_1000/mAP_lim) and covers
recall@k up to 16; larger recall ks and MRR come from the rank of the first
same-class sample, counted only for the queries whose first hit lies deeper. One
k-means serves ``nmi``/``ami``/``f1`` and another, on the L2-normalised features,
the ``c_`` ones; one SVD serves every ``rho_spectrum@m``. Only what the requested
metrics need runs. Memory: blocks of ~2^26 distances (256 MB) in the kNN pass and
the k-means; at 60,502 × 128 the whole suite peaks ~0.4 GB above the input
(bench/eval.py).

Definitions kept from the original, quirks included (documented, on purpose):

* recall@k is the hit rate: a query counts when any of its k nearest other samples
  shares its label. A query whose class has no other member is a miss.
* mAP: AP_q = (1/f_q) Σ_{i≤R} rel_i·P@i with f_q the class size *including* the
  query, so a perfect ranking scores (f_q−1)/f_q (not Musgrave's MAP@R). R = f_q for
  ``mAP_c``, min(1000, N−1) for ``mAP_1000``, min(1023, N−1) for ``mAP_lim``.
  A singleton query has AP 0.
* f1: pair-counting F1 (symmetric, so the original's swapped precision/recall
  naming does not matter).

Fixes and changes compared with the original:

1. The query is excluded from its own neighbours by index (its distance entry is
   masked before the top-k); the original dropped column 0 of a search that
   included the query, which is wrong under duplicates and ties.
2. Ties in a neighbour ranking (and in a nearest-centroid assignment) go to the
   lower index, deterministically; faiss's order was implementation-defined.
3. k-means uses k = the number of distinct labels of the evaluated set; the original
   used the number of *training* classes on every split.
4. ``c_nmi``/``c_f1`` get their own k-means on the L2-normalised features, points
   assigned by inner product with the normalised centroids; the original overwrote
   the cosine centroids with the normalised Euclidean ones.
5. NMI fixes ``average_method="arithmetic"``; the original took sklearn's default,
   which changed between versions.
6. ``dists@intra`` averages over the classes with ≥ 2 samples only; the original's
   replacement of the NaN of singleton classes indexed positions 0/1 instead of masking.
7. ``rho_spectrum`` uses all singular values from ``torch.linalg.svdvals`` on every
   device; the original's CPU path used TruncatedSVD with D−1 components (dropping the
   smallest value), its GPU path the full SVD.
8. mAP never searches past the N−1 other samples: the original's full-R ``mAP``
   searched k = N+1 and wrapped faiss's −1 padding to the last label. The full-R
   ``mAP`` and the missing ``c_mAP`` are not offered.
9. k-means is seeded by k-means++ from a torch generator (faiss: random init, seed
   1234), 20 Lloyd iterations at most, empty clusters re-seeded at the farthest point.
   The k-means++ draws are batched rejection sampling (exactly D² sampling, one
   blocked matmul per batch of seeds) and Lloyd keeps each point's 8 nearest
   centroids, recomputing only the centroids that moved (same result as plain
   Lloyd), so k = 11,316 over 60,502 points takes the seeding's matmuls and one
   full pass (after the first step), not 20.
   The faiss backend runs faiss.Kmeans (20 iterations, min/max points per centroid
   1/1e9 as the original) from the same k-means++ centroids; its empty-cluster rule
   (split a big cluster) and rounding differ, so its nmi/f1 can differ slightly.
10. Cases that cannot be computed are reported, not crashed on: ``compute_metrics``
    returns them with a reason (single class → nmi/f1; no class with two samples →
    recall/mAP/dists@intra; k ≥ N → recall@k; non-finite embeddings → everything).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.metric_names import MetricSpec, check_metric_name, display_name, list_metrics, parse_metric_name
from engine.metrics.backends import BACKENDS, faiss_kmeans, resolve_backend
from engine.metrics.clustering import ami, nmi, pair_f1
from engine.metrics.dists import inter_class_distance, intra_class_distance
from engine.metrics.lloyd import DEFAULT_ITERATIONS, assign, kmeans, kmeans_plus_plus_centroids
from engine.metrics.neighbours import knn
from engine.metrics.retrieval import retrieval_pass
from engine.metrics.spectrum import rho_spectrum, singular_values

__all__ = [
    "BACKENDS",
    "assign",
    "check_metric_name",
    "display_name",
    "cluster",
    "compute_metrics",
    "evaluate",
    "kmeans",
    "knn",
    "list_metrics",
    "ami",
    "nmi",
    "pair_f1",
]

MetricValue = float | list[float]


def _as_embeddings(embeddings: Any, device: str | torch.device | None) -> torch.Tensor:
    if isinstance(embeddings, torch.Tensor):
        x = embeddings.detach()
        target = torch.device(device) if device is not None else x.device
    else:
        x = torch.as_tensor(np.asarray(embeddings))
        target = torch.device(device) if device is not None else torch.device("cpu")
    if x.ndim != 2:
        raise ValueError(f"embeddings must be N x D, got shape {tuple(x.shape)}")
    return x.to(device=target, dtype=torch.float32)


def _as_label_array(labels: Any, n: int) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels).ravel()
    if labels.shape[0] != n:
        raise ValueError(f"got {n} embeddings but {labels.shape[0]} labels")
    return labels


def _as_class_ids(labels: Any, n: int, device: torch.device) -> tuple[np.ndarray, torch.Tensor]:
    labels = _as_label_array(labels, n)
    _, ids = np.unique(labels, return_inverse=True)
    return labels, torch.as_tensor(ids.ravel().astype(np.int64), device=device)


def cluster(
    x: torch.Tensor, k: int, *, space: str = "e", seed: int = 0, backend: str = "torch",
    iterations: int = DEFAULT_ITERATIONS,
) -> torch.Tensor:
    """Cluster ids as the nmi/ami/f1 (space 'e') or c_nmi/c_ami/c_f1 (space 'c') metrics compute them.

    *backend* 'torch' (this package's k-means) or 'faiss' (``faiss.Kmeans`` from the
    same k-means++ centroids); 'auto' picks as :func:`compute_metrics` does.
    """
    x = torch.as_tensor(x).to(torch.float32)
    backend = resolve_backend(backend, x.device)
    data = F.normalize(x, dim=1) if space == "c" else x
    metric = "cosine" if space == "c" else "euclidean"
    if backend == "faiss":
        init = kmeans_plus_plus_centroids(data, k, seed=seed)
        centroids, ids = faiss_kmeans(data, k, seed=seed, iterations=iterations, init=init,
                                      on_gpu=x.device.type == "cuda")
        if space == "c":
            ids = assign(data.cpu(), centroids, metric="cosine")[0]
        return ids.to(x.device)
    centroids, ids = kmeans(data, k, seed=seed, iterations=iterations)
    if space == "c":
        return assign(data, centroids, metric=metric)[0]
    return ids


@dataclass
class _Sets:
    """The evaluated sets: queries and gallery for retrieval, the union for everything else."""

    query: torch.Tensor
    query_ids: torch.Tensor
    gallery: torch.Tensor | None  # None: the self-search
    gallery_ids: torch.Tensor | None
    self_index: torch.Tensor | None  # gallery row of each query, −1 for none; None: disjoint sets
    union: torch.Tensor
    union_ids: torch.Tensor
    union_labels: np.ndarray


def _is_pair(arg: Any) -> bool:
    return isinstance(arg, (tuple, list)) and len(arg) == 2 and np.ndim(arg[0]) == 2


def _rows(selector: Any, n: int, what: str) -> np.ndarray:
    if isinstance(selector, torch.Tensor):
        selector = selector.detach().cpu().numpy()
    sel = np.asarray(selector)
    if sel.dtype == bool:
        if sel.shape != (n,):
            raise ValueError(f"{what} mask must have one entry per embedding ({n}), got shape {sel.shape}")
        return np.nonzero(sel)[0].astype(np.int64)
    if sel.size and not np.issubdtype(sel.dtype, np.integer):
        raise ValueError(f"{what} must be row indices, a boolean mask or an (embeddings, labels) pair")
    rows = sel.astype(np.int64).ravel()
    if rows.size and (rows.min() < -n or rows.max() >= n):
        raise ValueError(f"{what} row indices must be in 0..{n - 1}")
    rows = np.where(rows < 0, rows + n, rows)
    if np.unique(rows).size != rows.size:
        raise ValueError(f"{what} row indices must not repeat")
    return rows


def _sets(embeddings: Any, labels: Any, query: Any, gallery: Any, device: str | torch.device | None) -> _Sets:
    if (query is None) != (gallery is None):
        raise ValueError("give both query and gallery, or neither")
    if query is None:
        x = _as_embeddings(embeddings, device)
        raw, ids = _as_class_ids(labels, x.shape[0], x.device)
        return _Sets(x, ids, None, None, None, x, ids, raw)
    if _is_pair(query) != _is_pair(gallery):
        raise ValueError("query and gallery must both be row selectors or both (embeddings, labels) pairs")
    if _is_pair(query):
        if embeddings is not None or labels is not None:
            raise ValueError("with (embeddings, labels) pairs as query and gallery, pass None as embeddings and labels")
        xq = _as_embeddings(query[0], device)
        xg = _as_embeddings(gallery[0], device if device is not None else xq.device)
        if xq.shape[1] != xg.shape[1]:
            raise ValueError(f"query and gallery dimensions differ: {xq.shape[1]} vs {xg.shape[1]}")
        lq, lg = _as_label_array(query[1], xq.shape[0]), _as_label_array(gallery[1], xg.shape[0])
        raw = np.concatenate([lq, lg])
        _, ids = np.unique(raw, return_inverse=True)
        ids = torch.as_tensor(ids.ravel().astype(np.int64), device=xq.device)
        nq = xq.shape[0]
        union = torch.cat([xq, xg.to(xq.device)])
        return _Sets(xq, ids[:nq], xg.to(xq.device), ids[nq:], None, union, ids, raw)
    x = _as_embeddings(embeddings, device)
    n = x.shape[0]
    raw, ids = _as_class_ids(labels, n, x.device)
    rq, rg = _rows(query, n, "query"), _rows(gallery, n, "gallery")
    where = np.full(n, -1, dtype=np.int64)
    where[rg] = np.arange(rg.size)
    self_index = torch.as_tensor(where[rq], device=x.device)
    union = np.union1d(rq, rg)
    tq, tg, tu = (torch.as_tensor(r, device=x.device) for r in (rq, rg, union))
    return _Sets(x[tq], ids[tq], x[tg], ids[tg], self_index, x[tu], ids[tu], raw[union])


def compute_metrics(
    embeddings: Any,
    labels: Any,
    metrics: Sequence[str],
    *,
    query: Any = None,
    gallery: Any = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> tuple[dict[str, MetricValue], dict[str, str]]:
    """Compute the named metrics of *embeddings* (N × D) with *labels* (N, any hashable ints).

    Returns (values, missing): values maps each computed name to a python float
    (``rho_spectrum@0``: the normalised spectrum as a list of floats); missing maps
    each name that could not be computed to a short reason. *seed* seeds k-means;
    *device* is where the work runs (default: the embeddings' device);
    *chunk_size* is the number of query rows per kNN block (default: automatic);
    *backend* is 'auto', 'torch' or 'faiss' (see :mod:`engine.metrics.backends`).

    Query/gallery evaluation: *query* and *gallery* are either row selectors of
    *embeddings* (int indices or boolean masks; a row in both is never its own
    neighbour), or ``(embeddings, labels)`` pairs of two disjoint sets (then pass
    ``None`` as *embeddings* and *labels*). The retrieval metrics rank the gallery
    for every query; the clustering, dists and rho metrics use the union of the two.
    Raises ValueError for an unknown metric name or mismatched shapes.
    """
    specs = [parse_metric_name(name) for name in metrics]
    if backend not in BACKENDS:
        raise ValueError(f"unknown metrics backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    sets = _sets(embeddings, labels, query, gallery, device)
    values: dict[str, MetricValue] = {}
    missing: dict[str, str] = {}

    if sets.union.shape[0] == 0:
        return values, {s.name: "no samples" for s in specs}
    if not bool(torch.isfinite(sets.union).all()):
        return values, {s.name: "embeddings contain NaN or Inf" for s in specs}

    counts = torch.bincount(sets.union_ids)
    n_classes = int((counts > 0).sum())
    engine = resolve_backend(backend, sets.union.device)

    with torch.no_grad():
        _retrieval(sets, specs, chunk_size, engine, values, missing)
        _clustering(sets.union, sets.union_labels, n_classes, specs, seed, engine, values, missing)
        _distances(sets.union, sets.union_ids, specs, values, missing)
        _spectrum(sets.union, specs, values, missing)

    order = {s.name: i for i, s in enumerate(specs)}
    values = dict(sorted(values.items(), key=lambda kv: order[kv[0]]))
    missing = dict(sorted(missing.items(), key=lambda kv: order[kv[0]]))
    return values, missing


def evaluate(
    embeddings: Any,
    labels: Any,
    metrics: Sequence[str],
    *,
    query: Any = None,
    gallery: Any = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> dict[str, MetricValue | None]:
    """Like :func:`compute_metrics`, with the metrics that could not be computed as None."""
    values, _ = compute_metrics(embeddings, labels, metrics, query=query, gallery=gallery, seed=seed, device=device,
                                chunk_size=chunk_size, backend=backend)
    return {name: values.get(name) for name in metrics}


def _retrieval(
    sets: _Sets,
    specs: list[MetricSpec],
    chunk_size: int | None,
    backend: str,
    values: dict[str, MetricValue],
    missing: dict[str, str],
) -> None:
    self_search = sets.gallery is None
    x, ids = sets.query, sets.query_ids
    n_q = x.shape[0]
    g_ids = ids if self_search else sets.gallery_ids
    n_g = n_q if self_search else sets.gallery.shape[0]
    own = torch.ones(n_q, dtype=torch.int64, device=x.device) if self_search else (
        (sets.self_index >= 0).to(torch.int64) if sets.self_index is not None else torch.zeros_like(ids))
    visible = n_g - (1 if bool(own.any()) else 0)
    if n_q and n_g:
        r = torch.bincount(g_ids, minlength=int(sets.union_ids.max()) + 1)[ids] - own
        has_pairs = bool((r >= 1).any())
    else:
        has_pairs = False
    for space, metric in (("e", "euclidean"), ("c", "cosine")):
        wanted = [s for s in specs if s.kind in ("recall", "map", "rank") and s.space == space]
        if not wanted:
            continue
        if not has_pairs:
            reason = ("no class has two or more samples" if self_search
                      else "no query has a sample of its class in the gallery")
            for s in wanted:
                missing[s.name] = reason
            continue
        ks = sorted({s.arg for s in wanted if s.kind == "recall" and s.arg <= visible})
        for s in wanted:
            if s.kind == "recall" and s.arg > visible:
                missing[s.name] = (f"k={s.arg} needs more than {s.arg} samples, got {n_q}" if self_search
                                   else f"k={s.arg} exceeds the {visible} gallery samples a query can see")
        variants = sorted({s.arg for s in wanted if s.kind == "map"})
        extra = sorted({s.arg for s in wanted if s.kind == "rank"})
        if not ks and not variants and not extra:
            continue
        kw: dict[str, Any] = {}
        if extra:
            kw["extra"] = extra
        if not self_search:
            kw.update(gallery=sets.gallery, gallery_ids=sets.gallery_ids, self_index=sets.self_index)
        if backend != "torch":
            kw.update(backend=backend, on_gpu=x.device.type == "cuda")
        result = retrieval_pass(x, ids, recall_ks=ks, map_variants=variants, metric=metric, chunk_size=chunk_size, **kw)
        for s in wanted:
            key = {"recall": f"recall@{s.arg}", "map": f"mAP_{s.arg}", "rank": s.arg}[s.kind]
            if key in result:
                values[s.name] = result[key]


def _clustering(
    x: torch.Tensor,
    raw_labels: np.ndarray,
    n_classes: int,
    specs: list[MetricSpec],
    seed: int,
    backend: str,
    values: dict[str, MetricValue],
    missing: dict[str, str],
) -> None:
    scores = {"nmi": nmi, "ami": ami, "f1": pair_f1}
    for space in ("e", "c"):
        wanted = [s for s in specs if s.kind in scores and s.space == space]
        if not wanted:
            continue
        if n_classes < 2:
            for s in wanted:
                missing[s.name] = "a single class: clustering scores are undefined"
            continue
        kw = {"backend": backend} if backend != "torch" else {}
        clusters = cluster(x, n_classes, space=space, seed=seed, **kw).cpu().numpy()
        for s in wanted:
            values[s.name] = scores[s.kind](raw_labels, clusters)


def _distances(
    x: torch.Tensor,
    class_ids: torch.Tensor,
    specs: list[MetricSpec],
    values: dict[str, MetricValue],
    missing: dict[str, str],
) -> None:
    wanted = [s for s in specs if s.kind == "dists"]
    if not wanted:
        return
    need_intra = any(s.arg in ("intra", "intra_over_inter") for s in wanted)
    need_inter = any(s.arg in ("inter", "intra_over_inter") for s in wanted)
    intra = intra_class_distance(x, class_ids) if need_intra else None
    inter = inter_class_distance(x, class_ids) if need_inter else None
    for s in wanted:
        if s.arg in ("intra", "intra_over_inter") and intra is None:
            missing[s.name] = "no class has two or more samples"
        elif s.arg in ("inter", "intra_over_inter") and inter is None:
            missing[s.name] = "needs at least two classes"
        elif s.arg == "intra":
            values[s.name] = intra
        elif s.arg == "inter":
            values[s.name] = inter
        else:
            values[s.name] = intra / max(inter, 1e-8)


def _spectrum(
    x: torch.Tensor, specs: list[MetricSpec], values: dict[str, MetricValue], missing: dict[str, str]
) -> None:
    wanted = [s for s in specs if s.kind == "rho"]
    if not wanted:
        return
    s_values = singular_values(x)
    for s in wanted:
        rho = rho_spectrum(s_values, s.arg)
        if rho is None:
            kept = max(0, s_values.numel() - max(abs(s.arg) - 1, 0))
            missing[s.name] = (
                f"m={s.arg} drops every one of the {s_values.numel()} singular values"
                if kept == 0
                else "all singular values are zero"
            )
        else:
            values[s.name] = rho
