"""Evaluation metrics of embeddings: retrieval (recall@k, mAP), clustering (NMI, F1),
embedding-space distances and the ρ spectrum.

Entry points: :func:`compute_metrics` (values plus the reasons of the ones that
could not be computed) and :func:`evaluate` (missing ones as None);
:func:`check_metric_name` / :func:`list_metrics` for configs. Names follow the
original codebase (its ``metrics/``; reference inventory §8.2). The ``e_``/un-prefixed metrics use
Euclidean distance, the ``c_`` ones L2-normalised features (inner product).

Shared work: one exact kNN pass per space with the largest k that any requested
retrieval metric needs serves every recall and mAP of that space; one k-means
serves ``nmi``/``f1`` and another, on the L2-normalised features, ``c_nmi``/``c_f1``;
one SVD serves every ``rho_spectrum@m``. Only what the requested metrics need runs.

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
10. Cases that cannot be computed are reported, not crashed on: ``compute_metrics``
    returns them with a reason (single class → nmi/f1; no class with two samples →
    recall/mAP/dists@intra; k ≥ N → recall@k; non-finite embeddings → everything).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.metrics.clustering import nmi, pair_f1
from engine.metrics.dists import inter_class_distance, intra_class_distance
from engine.metrics.lloyd import assign, kmeans
from engine.metrics.names import MetricSpec, check_metric_name, display_name, list_metrics, parse_metric_name
from engine.metrics.neighbours import knn
from engine.metrics.retrieval import retrieval_pass
from engine.metrics.spectrum import rho_spectrum, singular_values

__all__ = [
    "assign",
    "check_metric_name",
    "display_name",
    "cluster",
    "compute_metrics",
    "evaluate",
    "kmeans",
    "knn",
    "list_metrics",
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


def _as_class_ids(labels: Any, n: int, device: torch.device) -> tuple[np.ndarray, torch.Tensor]:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels).ravel()
    if labels.shape[0] != n:
        raise ValueError(f"got {n} embeddings but {labels.shape[0]} labels")
    _, ids = np.unique(labels, return_inverse=True)
    return labels, torch.as_tensor(ids.ravel().astype(np.int64), device=device)


def cluster(x: torch.Tensor, k: int, *, space: str = "e", seed: int = 0) -> torch.Tensor:
    """Cluster ids as the nmi/f1 (space 'e') or c_nmi/c_f1 (space 'c') metrics compute them."""
    x = torch.as_tensor(x).to(torch.float32)
    if space == "c":
        unit = F.normalize(x, dim=1)
        centroids, _ = kmeans(unit, k, seed=seed)
        return assign(unit, centroids, metric="cosine")[0]
    return kmeans(x, k, seed=seed)[1]


def compute_metrics(
    embeddings: Any,
    labels: Any,
    metrics: Sequence[str],
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
) -> tuple[dict[str, MetricValue], dict[str, str]]:
    """Compute the named metrics of *embeddings* (N × D) with *labels* (N, any hashable ints).

    Returns (values, missing): values maps each computed name to a python float
    (``rho_spectrum@0``: the normalised spectrum as a list of floats); missing maps
    each name that could not be computed to a short reason. *seed* seeds k-means;
    *device* is where the work runs (default: the embeddings' device);
    *chunk_size* is the number of query rows per kNN block (default: automatic).
    Raises ValueError for an unknown metric name or mismatched shapes.
    """
    specs = [parse_metric_name(name) for name in metrics]
    x = _as_embeddings(embeddings, device)
    n = x.shape[0]
    raw_labels, class_ids = _as_class_ids(labels, n, x.device)
    values: dict[str, MetricValue] = {}
    missing: dict[str, str] = {}

    if n == 0:
        return values, {s.name: "no samples" for s in specs}
    if not bool(torch.isfinite(x).all()):
        return values, {s.name: "embeddings contain NaN or Inf" for s in specs}

    counts = torch.bincount(class_ids)
    n_classes = counts.numel()
    has_pairs = bool((counts >= 2).any())

    with torch.no_grad():
        _retrieval(x, class_ids, specs, has_pairs, chunk_size, values, missing)
        _clustering(x, raw_labels, n_classes, specs, seed, values, missing)
        _distances(x, class_ids, specs, values, missing)
        _spectrum(x, specs, values, missing)

    order = {s.name: i for i, s in enumerate(specs)}
    values = dict(sorted(values.items(), key=lambda kv: order[kv[0]]))
    missing = dict(sorted(missing.items(), key=lambda kv: order[kv[0]]))
    return values, missing


def evaluate(
    embeddings: Any,
    labels: Any,
    metrics: Sequence[str],
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
) -> dict[str, MetricValue | None]:
    """Like :func:`compute_metrics`, with the metrics that could not be computed as None."""
    values, _ = compute_metrics(embeddings, labels, metrics, seed=seed, device=device, chunk_size=chunk_size)
    return {name: values.get(name) for name in metrics}


def _retrieval(
    x: torch.Tensor,
    class_ids: torch.Tensor,
    specs: list[MetricSpec],
    has_pairs: bool,
    chunk_size: int | None,
    values: dict[str, MetricValue],
    missing: dict[str, str],
) -> None:
    n = x.shape[0]
    for space, metric in (("e", "euclidean"), ("c", "cosine")):
        wanted = [s for s in specs if s.kind in ("recall", "map") and s.space == space]
        if not wanted:
            continue
        if not has_pairs:
            for s in wanted:
                missing[s.name] = "no class has two or more samples"
            continue
        ks = sorted({s.arg for s in wanted if s.kind == "recall" and s.arg <= n - 1})
        for s in wanted:
            if s.kind == "recall" and s.arg > n - 1:
                missing[s.name] = f"k={s.arg} needs more than {s.arg} samples, got {n}"
        variants = sorted({s.arg for s in wanted if s.kind == "map"})
        if not ks and not variants:
            continue
        result = retrieval_pass(x, class_ids, recall_ks=ks, map_variants=variants, metric=metric, chunk_size=chunk_size)
        for s in wanted:
            key = f"recall@{s.arg}" if s.kind == "recall" else f"mAP_{s.arg}"
            if key in result:
                values[s.name] = result[key]


def _clustering(
    x: torch.Tensor,
    raw_labels: np.ndarray,
    n_classes: int,
    specs: list[MetricSpec],
    seed: int,
    values: dict[str, MetricValue],
    missing: dict[str, str],
) -> None:
    for space in ("e", "c"):
        wanted = [s for s in specs if s.kind in ("nmi", "f1") and s.space == space]
        if not wanted:
            continue
        if n_classes < 2:
            for s in wanted:
                missing[s.name] = "a single class: clustering scores are undefined"
            continue
        clusters = cluster(x, n_classes, space=space, seed=seed).cpu().numpy()
        for s in wanted:
            values[s.name] = nmi(raw_labels, clusters) if s.kind == "nmi" else pair_f1(raw_labels, clusters)


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
