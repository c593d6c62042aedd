"""Recall@k, the mAP variants and the MAP@R family from one exact kNN pass.

The pass searches the largest k any requested metric needs and turns each block
of neighbours into a relevance block (neighbour's label == query's label) right
away, so only per-query results are kept (O(N) memory besides one block).

Notation: R_q = number of *other* gallery samples of the query's class (in the
self-search: the class size − 1); f_q = R_q + 1 (the class size, the query
included, as the original counts it).

* recall@k: 1 if any of the k nearest gallery samples shares the query's label.
* AP with rank limit L_q (the original's mAP): (1/f_q) · Σ_{i ≤ L_q} rel_i · P@i,
  P@i = (#relevant in the first i) / i. L_q = f_q for ``mAP_c``, min(1000, G) for
  ``mAP_1000`` and min(1023, G) for ``mAP_lim`` (G = the gallery rows a query can
  see); ranks past G do not exist and add nothing.
* precision_at_1: rel_1. r_precision: (#relevant in the first R_q) / R_q.
  map_at_r: (1/R_q) · Σ_{i ≤ R_q} rel_i · P@i (Musgrave et al. 2020).
  mean_reciprocal_rank: 1 / (rank of the first relevant sample) over the *whole*
  gallery: when it is not among the k searched, it is counted exactly from the
  query's distance row (samples strictly nearer, plus the equally near ones of lower
  index). These four average over the queries with R_q ≥ 1 only (a query whose class
  has no other sample is left out, as pytorch-metric-learning does); recall and mAP
  count such a query as a miss / AP 0, as the original does.

Cost: the top-k selection only goes as deep as the mAP variants and the MAP@R family
need (the largest class size at most, unless mAP_1000/mAP_lim are asked for) and
covers the small recall ks; a large recall@k (100, 1000) is read from the rank of the
query's first same-class sample, counted only for the queries whose first hit lies
beyond the selected depth. Both give the same hit/miss as a full top-k would. On a
large gallery both read only the segments of 64 columns whose minimum can matter
(:mod:`engine.metrics.neighbours`), so the pass costs about its matmul (SOP scale, 1
thread: the matmul takes ~11 of the ~12.5 CPU-seconds).
"""

from __future__ import annotations

import torch

from engine.metrics.neighbours import count_before, distance_rows, gallery_offset, prepare, search_blocks

MAP_LIMITS = {"1000": 1000, "lim": 1023}
MUSGRAVE = ("precision_at_1", "r_precision", "map_at_r", "mean_reciprocal_rank")


def map_rank_limit(variant: str, n_visible: int, max_class_size: int) -> int:
    """Ranks (neighbours) a mAP variant reads, capped at the *n_visible* gallery rows that exist."""
    if variant == "c":
        return min(max_class_size, n_visible)
    return min(MAP_LIMITS[variant], n_visible)


SMALL_RECALL_K = 16  # recall ks up to this are read from the top-k selection when it is this deep anyway
MEMBER_TABLE_MAX = 64  # class sizes up to this use a per-query table of same-class gallery rows


def member_table(q_class: torch.Tensor, g_class: torch.Tensor, self_index: torch.Tensor | None) -> torch.Tensor | None:
    """Gallery rows of each query's class (its own row removed), padded with −1: Q × (max class size).

    None when the largest class is bigger than :data:`MEMBER_TABLE_MAX` (masks are used then).
    """
    n_classes = int(max(int(q_class.max()), int(g_class.max()))) + 1
    counts = torch.bincount(g_class, minlength=n_classes)
    width = int(counts.max())
    if width > MEMBER_TABLE_MAX:
        return None
    order = torch.sort(g_class, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    offsets = torch.arange(width, device=g_class.device)
    pos = starts[q_class].unsqueeze(1) + offsets.unsqueeze(0)
    valid = offsets.unsqueeze(0) < counts[q_class].unsqueeze(1)
    rows = order[pos.clamp(max=order.numel() - 1)]
    if self_index is not None:
        valid &= rows != self_index.unsqueeze(1)
    return torch.where(valid, rows, torch.full_like(rows, -1))


def precision_gain(relf: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Σ_{i≤r} rel_i·P@i for every prefix r of each relevance row: the numerators of AP (mAP variants, MAP@R).

    *relf*: block × depth relevance (float64), *ranks*: 1..depth (float64).
    """
    return torch.cumsum(relf * (torch.cumsum(relf, dim=1) / ranks), dim=1)


def first_hit_ranks(
    dist: torch.Tensor, q_class: torch.Tensor, g_class: torch.Tensor, members: torch.Tensor | None = None
) -> torch.Tensor:
    """Rank (1-based) of the first same-class gallery sample in each distance row (ties: lower index first).

    *dist* is block × G with the query's own column already +inf; every row must have
    a same-class entry. *members*: the rows' :func:`member_table` rows, when available.
    """
    n_g = dist.shape[1]
    inf = float("inf")
    if members is not None:
        vals = dist.gather(1, members.clamp(min=0)).masked_fill(members < 0, inf)
        nearest = vals.min(dim=1).values.unsqueeze(1)
        pos = torch.where((vals == nearest) & (members >= 0), members, n_g).min(dim=1).values.unsqueeze(1)
    else:
        same = g_class.unsqueeze(0) == q_class.unsqueeze(1)
        nearest = torch.where(same, dist, torch.full_like(dist, inf)).min(dim=1).values.unsqueeze(1)
        cols = torch.arange(n_g, device=dist.device).unsqueeze(0)
        pos = torch.where(same & (dist == nearest), cols, n_g).min(dim=1).values.unsqueeze(1)
    return count_before(dist, nearest.squeeze(1), pos.squeeze(1)) + 1


def retrieval_pass(
    x: torch.Tensor,
    class_ids: torch.Tensor,
    *,
    recall_ks: list[int],
    map_variants: list[str],
    extra: list[str] | tuple[str, ...] = (),
    metric: str = "euclidean",
    chunk_size: int | None = None,
    gallery: torch.Tensor | None = None,
    gallery_ids: torch.Tensor | None = None,
    self_index: torch.Tensor | None = None,
    backend: str = "torch",
    on_gpu: bool = False,
) -> dict[str, float]:
    """Mean recall@k (keys ``recall@k``), mAP (keys ``mAP_<variant>``) and the *extra* metrics (:data:`MUSGRAVE`).

    Self-search (default): *x* is searched against itself, each query's own row
    excluded. Query/gallery: *x* are the queries, *gallery*/*gallery_ids* the
    gallery and *self_index* the gallery row of each query (−1: none; None: the sets
    are disjoint). Class ids are 0..C−1, shared by queries and gallery. The caller
    checks that every k fits the gallery and that some query has R_q ≥ 1 when an
    extra metric is asked for. *backend*: 'torch' or 'faiss'.
    """
    if gallery is None:
        gallery, gallery_ids = x, class_ids
        self_index = torch.arange(x.shape[0], device=x.device)
    n_q, n_g = x.shape[0], gallery.shape[0]
    device = x.device
    n_classes = int(max(int(class_ids.max()), int(gallery_ids.max()))) + 1
    in_gallery = torch.zeros(n_q, dtype=torch.int64, device=device)
    if self_index is not None:
        self_index = self_index.to(device)
        in_gallery = (self_index >= 0).to(torch.int64)
    r = torch.bincount(gallery_ids, minlength=n_classes).to(device)[class_ids] - in_gallery  # R_q
    f = r + 1
    visible = n_g - (1 if bool(in_gallery.any()) else 0)
    limits = {v: map_rank_limit(v, visible, int(f.max())) for v in map_variants}
    extra = [m for m in MUSGRAVE if m in extra]
    r_max = min(int(r.max()), visible)

    # how deep the top-k selection goes; larger recall ks come from first-hit ranks
    depth = max([*limits.values(), *([max(r_max, 1)] if set(extra) - {"mean_reciprocal_rank"} else [1])])
    depth = max([depth, *[k for k in recall_ks if k <= max(depth, SMALL_RECALL_K)]])
    depth = min(depth, visible)
    deep_ks = [k for k in recall_ks if k > depth]
    want_rank = bool(deep_ks) or "mean_reciprocal_rank" in extra
    members = member_table(class_ids, gallery_ids, self_index) if want_rank else None

    hits = {k: torch.zeros(n_q, dtype=torch.bool, device=device) for k in recall_ks}
    ap = {v: torch.zeros(n_q, dtype=torch.float64, device=device) for v in map_variants}
    per_query = {m: torch.zeros(n_q, dtype=torch.float64, device=device) for m in extra}
    first_rank = torch.zeros(n_q, dtype=torch.int64, device=device)  # 0: no same-class sample at all
    ranks = torch.arange(1, depth + 1, device=device, dtype=torch.float64)
    need_gain = bool(map_variants) or "map_at_r" in extra
    later: list[torch.Tensor] = []  # queries to rank afterwards (faiss gives no distance rows)

    if backend == "faiss":
        from engine.metrics.backends import faiss_search_blocks

        blocks = faiss_search_blocks(x, gallery, depth, metric=metric, self_index=self_index, chunk_size=chunk_size,
                                     on_gpu=on_gpu)
    else:
        blocks = search_blocks(x, gallery, depth, metric=metric, self_index=self_index, chunk_size=chunk_size)

    for start, idx, dist in blocks:
        idx = idx.to(device)
        stop = start + idx.shape[0]
        qc = class_ids[start:stop]
        rel = gallery_ids[idx] == qc.unsqueeze(1)
        for k in recall_ks:
            if k <= depth:
                hits[k][start:stop] = rel[:, :k].any(dim=1)
        rq = r[start:stop]
        last = (rq.clamp(min=1, max=depth) - 1).unsqueeze(1)  # position of rank R_q (R_q ≥ 1 rows only matter)
        relf = rel.to(torch.float64)
        if need_gain:
            gain = precision_gain(relf, ranks)
            fq = f[start:stop].to(torch.float64)
            for v, limit in limits.items():
                if v == "c":
                    at = torch.clamp(f[start:stop], max=limit) - 1
                    ap[v][start:stop] = gain.gather(1, at.unsqueeze(1)).squeeze(1) / fq
                else:
                    ap[v][start:stop] = gain[:, limit - 1] / fq
            if "map_at_r" in extra:
                per_query["map_at_r"][start:stop] = gain.gather(1, last).squeeze(1) / rq.clamp(min=1)
        if "precision_at_1" in extra:
            per_query["precision_at_1"][start:stop] = relf[:, 0]
        if "r_precision" in extra:
            found = torch.cumsum(relf, dim=1).gather(1, last).squeeze(1)
            per_query["r_precision"][start:stop] = found / rq.clamp(min=1)
        if want_rank:
            any_hit = rel.any(dim=1)
            first_rank[start:stop] = torch.where(any_hit, torch.argmax(rel.to(torch.uint8), dim=1) + 1, 0)
            beyond = torch.nonzero(~any_hit & (rq >= 1)).flatten()
            if beyond.numel():
                if dist is not None:
                    mem = members[start:stop][beyond] if members is not None else None
                    first_rank[start + beyond] = first_hit_ranks(dist[beyond], qc[beyond], gallery_ids, mem)
                else:
                    later.append(start + beyond)

    if later:  # faiss gave no distance rows: rank those queries with torch distances
        rows = torch.cat(later).to("cpu")
        q = prepare(x.detach().to("cpu", torch.float32), metric)
        g = prepare(gallery.detach().to("cpu", torch.float32), metric)
        offset = gallery_offset(g, metric)
        own = self_index.to("cpu") if self_index is not None else None
        g_cls, q_cls = gallery_ids.to("cpu"), class_ids.to("cpu")
        mem_cpu = members.to("cpu") if members is not None else None
        step = max(1, (1 << 24) // max(1, n_g))
        for s in range(0, rows.numel(), step):
            part = rows[s : s + step]
            dist = distance_rows(q[part], g, offset, own[part] if own is not None else None)
            rank = first_hit_ranks(dist, q_cls[part], g_cls, mem_cpu[part] if mem_cpu is not None else None)
            first_rank[part.to(device)] = rank.to(device)

    for k in deep_ks:
        hits[k] = (first_rank >= 1) & (first_rank <= k)
    if "mean_reciprocal_rank" in extra:
        per_query["mean_reciprocal_rank"] = torch.where(first_rank >= 1, 1.0 / first_rank.clamp(min=1).to(torch.float64), 0.0)

    out: dict[str, float] = {}
    for k in recall_ks:
        out[f"recall@{k}"] = float(hits[k].to(torch.float64).mean())
    for v in map_variants:
        out[f"mAP_{v}"] = float(ap[v].mean())
    counted = r >= 1
    for m in extra:
        out[m] = float(per_query[m][counted].mean()) if bool(counted.any()) else float("nan")
    return out
