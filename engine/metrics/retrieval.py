"""Recall@k and the mAP variants from one exact kNN pass.

The pass searches the largest k any requested metric needs and turns each block
of neighbours into a relevance block (neighbour's label == query's label) right
away, so only per-query results are kept (O(N) memory besides one block).

Definitions (f_q = number of samples of the query's class, the query included):

* recall@k: 1 if any of the k nearest other samples shares the query's label.
* AP with rank limit R_q: (1/f_q) · Σ_{i ≤ R_q} rel_i · P@i, P@i = (#relevant in the
  first i) / i. R_q = f_q for ``mAP_c``, min(1000, N−1) for ``mAP_1000`` and
  min(1023, N−1) for ``mAP_lim``; ranks past N−1 do not exist and add nothing.
"""

from __future__ import annotations

import torch

from engine.metrics.neighbours import knn_blocks

MAP_LIMITS = {"1000": 1000, "lim": 1023}


def map_rank_limit(variant: str, n: int, max_class_size: int) -> int:
    """Ranks (neighbours) a mAP variant reads, capped at the N−1 that exist."""
    if variant == "c":
        return min(max_class_size, n - 1)
    return min(MAP_LIMITS[variant], n - 1)


def retrieval_pass(
    x: torch.Tensor,
    class_ids: torch.Tensor,
    *,
    recall_ks: list[int],
    map_variants: list[str],
    metric: str = "euclidean",
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Mean recall@k (keys ``recall@k``) and mAP (keys ``mAP_<variant>``) over all queries.

    *class_ids* are 0..C−1. Every k must be ≤ N − 1 and N ≥ 2 (the caller checks).
    """
    n = x.shape[0]
    counts = torch.bincount(class_ids)
    f = counts[class_ids]  # class size of every query, itself included
    limits = {v: map_rank_limit(v, n, int(counts.max())) for v in map_variants}
    k_max = max([*recall_ks, *limits.values()])

    hits = {k: torch.zeros(n, dtype=torch.bool, device=x.device) for k in recall_ks}
    ap = {v: torch.zeros(n, dtype=torch.float64, device=x.device) for v in map_variants}
    ranks = torch.arange(1, k_max + 1, device=x.device, dtype=torch.float64)

    for start, idx in knn_blocks(x, k_max, metric=metric, chunk_size=chunk_size):
        stop = start + idx.shape[0]
        rel = class_ids[idx] == class_ids[start:stop].unsqueeze(1)
        for k in recall_ks:
            hits[k][start:stop] = rel[:, :k].any(dim=1)
        if map_variants:
            relf = rel.to(torch.float64)
            gain = torch.cumsum(relf * (torch.cumsum(relf, dim=1) / ranks), dim=1)  # Σ_{i≤r} rel_i·P@i
            fq = f[start:stop].to(torch.float64)
            for v, limit in limits.items():
                if v == "c":
                    last = torch.clamp(f[start:stop], max=limit) - 1
                    ap[v][start:stop] = gain.gather(1, last.unsqueeze(1)).squeeze(1) / fq
                else:
                    ap[v][start:stop] = gain[:, limit - 1] / fq

    out: dict[str, float] = {}
    for k in recall_ks:
        out[f"recall@{k}"] = float(hits[k].to(torch.float64).mean())
    for v in map_variants:
        out[f"mAP_{v}"] = float(ap[v].mean())
    return out
