"""Tests of the MAP@R family, AMI, query/gallery evaluation, the faiss backend and the fast k-means."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score
from test_metrics import col, ref_neighbours

import engine.metrics as M
from engine.metrics import compute_metrics, evaluate
from engine.metrics.backends import resolve_backend

RANK = ["precision_at_1", "r_precision", "map_at_r", "mean_reciprocal_rank"]
BACKENDS = ["torch", "faiss"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def vals(x, labels, names, **kw):
    out, missing = compute_metrics(None if x is None else np.asarray(x, dtype=np.float32), labels, names, **kw)
    assert not missing, missing
    return out


# ----------------------------------------------------------------------------- loop references


def ref_rank_metrics(order: np.ndarray, q_labels, g_labels, own: np.ndarray | None = None) -> dict[str, float]:
    """P@1, R-precision, MAP@R and MRR from full neighbour orders (one row per query, own row removed)."""
    q_labels, g_labels = np.asarray(q_labels), np.asarray(g_labels)
    out = {m: [] for m in RANK}
    for i, row in enumerate(order):
        rel = g_labels[row] == q_labels[i]
        r = int(rel.sum())
        if r == 0:
            continue
        out["precision_at_1"].append(float(rel[0]))
        out["r_precision"].append(rel[:r].sum() / r)
        prec = np.cumsum(rel[:r]) / np.arange(1, r + 1)
        out["map_at_r"].append(float((prec * rel[:r]).sum() / r))
        out["mean_reciprocal_rank"].append(1.0 / (np.argmax(rel) + 1))
    return {m: float(np.mean(v)) for m, v in out.items()}


def ref_qg_order(q: np.ndarray, g: np.ndarray, own: np.ndarray | None, metric="euclidean") -> list[np.ndarray]:
    q, g = np.asarray(q, np.float64), np.asarray(g, np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        d = -(q @ g.T)
    else:
        d = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    rows = []
    for i in range(len(q)):
        order = np.argsort(d[i], kind="stable")
        if own is not None and own[i] >= 0:
            order = order[order != own[i]]
        rows.append(order)
    return rows


# ----------------------------------------------------------------------------- names


def test_new_names_parse_and_display():
    for name in ["precision_at_1", "c_r_precision", "map_at_r", "c_mean_reciprocal_rank", "ami", "c_ami"]:
        M.check_metric_name(name)
    assert M.display_name("map_at_r") == "MAP@R" and M.display_name("c_ami") == "cAMI"
    with pytest.raises(ValueError, match="did you mean 'map_at_r'"):
        M.check_metric_name("MAP_at_R")


# ----------------------------------------------------------------------------- hand-made cases


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_metrics_by_hand_with_ties_and_a_singleton(backend):
    # A at 0, 2, 3; B at 1, 4; C (a singleton) at 100. Orders (ties: lower index first):
    # q0 A: 1B 2A 3A 4B     R=2  P@1 0  RP 1/2  AP@R 1/4  RR 1/2
    # q1 B: 0A 2A 3A 4B     R=1  P@1 0  RP 0    AP@R 0    RR 1/4   (0 and 2 tie at distance 1)
    # q2 A: 1B 3A 0A 4B     R=2  P@1 0  RP 1/2  AP@R 1/4  RR 1/2   (1/3 and 0/4 tie)
    # q3 A: 2A 4B 1B 0A     R=2  P@1 1  RP 1/2  AP@R 1/2  RR 1
    # q4 B: 3A 2A 1B 0A     R=1  P@1 0  RP 0    AP@R 0    RR 1/3
    # q5 C: no other member, left out of all four (but a miss for recall)
    x, y = col(0, 1, 2, 3, 4, 100), ["A", "B", "A", "A", "B", "C"]
    v = vals(x, y, [*RANK, "e_recall@1"], backend=backend)
    assert v["precision_at_1"] == pytest.approx(1 / 5)
    assert v["r_precision"] == pytest.approx(1.5 / 5)
    assert v["map_at_r"] == pytest.approx(1 / 5)
    assert v["mean_reciprocal_rank"] == pytest.approx(31 / 60)
    assert v["e_recall@1"] == pytest.approx(1 / 6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_metrics_with_duplicates(backend):
    # three identical points (classes A, B, A) and one B at (1, 1)
    x = np.array([[0, 0], [0, 0], [0, 0], [1, 1]], dtype=np.float32)
    y = ["A", "B", "A", "B"]
    # q0: 1B 2A 3B; q1: 0A 2A 3B; q2: 0A 1B 3B; q3: 0A 1B 2A (all at the same distance)
    v = vals(x, y, RANK, backend=backend)
    assert v["precision_at_1"] == pytest.approx(1 / 4)
    assert v["r_precision"] == pytest.approx(1 / 4)
    assert v["map_at_r"] == pytest.approx(1 / 4)
    assert v["mean_reciprocal_rank"] == pytest.approx((1 / 2 + 1 / 3 + 1 + 1 / 2) / 4)


def test_map_at_r_is_the_correct_map_c():
    # a perfect ranking: MAP@R = 1 where the original's mAP_c scores (f−1)/f
    x, y = col(0, 0.1, 0.2, 50, 50.1, 50.2), [1, 1, 1, 2, 2, 2]
    v = vals(x, y, ["map_at_r", "mAP_c", "r_precision"])
    assert v["map_at_r"] == 1.0 and v["r_precision"] == 1.0 and v["mAP_c"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reciprocal_rank_beyond_the_searched_depth(backend):
    # A at 0 and at 1000, 19 tight pairs in between: the first A of either A query is at rank 39
    x = col(0, *[10 * (j // 2 + 1) + j % 2 for j in range(38)], 1000)
    y = ["A"] + [f"p{j // 2}" for j in range(38)] + ["A"]
    v = vals(x, y, ["mean_reciprocal_rank", "e_recall@38", "e_recall@39", "e_recall@1"], backend=backend)
    ranks = [39] + [1] * 38 + [39]
    assert v["mean_reciprocal_rank"] == pytest.approx(np.mean([1 / r for r in ranks]))
    assert v["e_recall@38"] == pytest.approx(38 / 40) and v["e_recall@39"] == 1.0
    assert v["e_recall@1"] == pytest.approx(38 / 40)


def test_all_singletons_report_missing():
    names = [*RANK, "c_map_at_r", "ami"]
    out, missing = compute_metrics(col(0, 1, 2), [1, 2, 3], names)
    assert set(missing) == set(RANK) | {"c_map_at_r"} and "two or more" in missing["map_at_r"]
    assert "ami" in out
    out, missing = compute_metrics(col(0, 1, 2), [1, 1, 1], ["ami", "c_ami"])
    assert set(missing) == {"ami", "c_ami"}


def test_ami_by_hand():
    # two perfectly separated classes (in distance and in direction): AMI 1
    x = np.array([[1, 0], [1.1, 0.05], [0.9, -0.05], [0, 1], [0.05, 1.1], [-0.05, 0.9]]) * 10
    y = [1, 1, 1, 2, 2, 2]
    assert vals(x, y, ["ami", "c_ami"]) == pytest.approx({"ami": 1.0, "c_ami": 1.0})


# ----------------------------------------------------------------------------- random cross-checks


def random_set(kind: str, n=150, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "grid":  # small integers: exact distances, ties everywhere
        x = rng.integers(-2, 3, size=(n, 3)).astype(np.float32)
    else:
        x = rng.normal(size=(n, 6)).astype(np.float32)
        x[n // 2 : n // 2 + 10] = x[:10]  # duplicates (and duplicate pairs across classes)
    y = rng.integers(0, 12, size=n)
    y[-1] = 99  # a singleton class
    return x, y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["grid", "normal"])
@pytest.mark.parametrize("space, metric", [("e", "euclidean"), ("c", "cosine")])
def test_rank_metrics_match_loop_reference(backend, kind, space, metric):
    if metric == "cosine" and kind == "grid":
        pytest.skip("normalised grid points tie only up to float rounding: no exact reference")
    x, y = random_set(kind)
    pre = "" if space == "e" else "c_"
    v = vals(x, y, [pre + m for m in RANK], backend=backend)
    ref = ref_rank_metrics(ref_neighbours(x, metric), y, y)
    for m in RANK:
        assert v[pre + m] == pytest.approx(ref[m], abs=1e-12), m


def test_against_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    rng = np.random.default_rng(21)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    y = rng.integers(0, 40, size=400)
    calc = pml.AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r", "mean_reciprocal_rank"),
        avg_of_avgs=False, k=None, device=torch.device("cpu"),
    )
    # reference = query (ref_includes_query): each query's own row is left out, lone queries too
    theirs = calc.get_accuracy(torch.tensor(x), torch.tensor(y))
    ours = vals(x, y, RANK)
    assert ours["precision_at_1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours["mean_reciprocal_rank"] == pytest.approx(theirs["mean_reciprocal_rank"], abs=1e-6)
    # the cosine variants equal theirs on L2-normalised embeddings
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    theirs = calc.get_accuracy(torch.tensor(unit), torch.tensor(y))
    ours = vals(x, y, ["c_map_at_r", "c_precision_at_1"])
    assert ours["c_map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours["c_precision_at_1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("space", ["e", "c"])
def test_ami_and_nmi_match_sklearn_on_the_same_clusters(backend, space):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = rng.integers(0, 9, size=300)
    clusters = M.cluster(torch.tensor(x), 9, space=space, seed=3, backend=backend).numpy()
    pre = "" if space == "e" else "c_"
    v = vals(x, y, [pre + "ami", pre + "nmi"], seed=3, backend=backend)
    assert v[pre + "ami"] == pytest.approx(adjusted_mutual_info_score(y, clusters, average_method="arithmetic"))
    assert v[pre + "nmi"] == pytest.approx(M.nmi(y, clusters))
    assert v[pre + "ami"] < v[pre + "nmi"]  # random clusters: the chance correction bites


ALL_RETRIEVAL = [
    "e_recall@1", "e_recall@4", "e_recall@30", "c_recall@2", "c_recall@40", "mAP_c", "c_mAP_c", "mAP_1000",
    "mAP_lim", *RANK, *("c_" + m for m in RANK),
]  # fmt: skip


@pytest.mark.parametrize("kind", ["grid", "normal"])
def test_faiss_backend_equals_torch_backend(kind):
    x, y = random_set(kind, n=300, seed=4)
    if kind == "grid":
        x = x + 3.5
    torch_vals = vals(x, y, ALL_RETRIEVAL, backend="torch", chunk_size=37)
    faiss_vals = vals(x, y, ALL_RETRIEVAL, backend="faiss", chunk_size=37)
    assert torch_vals == faiss_vals
    for k in (1, 7, 299):
        got = [blk for _, blk, _ in M.backends.faiss_search_blocks(torch.tensor(x), torch.tensor(x), k,
                                                                    self_index=torch.arange(300), chunk_size=50)]
        assert torch.equal(torch.cat(got), M.knn(torch.tensor(x), k))


def test_backend_resolution():
    assert resolve_backend("auto", torch.device("cpu")) == M.backends.AUTO_CPU == "torch"
    assert resolve_backend("faiss", torch.device("cpu")) == "faiss"
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="unknown metrics backend 'gpu'"):
        compute_metrics(col(0, 1), [0, 0], ["e_recall@1"], backend="gpu")


# ----------------------------------------------------------------------------- query / gallery


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_gallery_pairs_match_a_loop_reference(backend):
    rng = np.random.default_rng(30)
    q = rng.integers(-2, 3, size=(60, 3)).astype(np.float32)
    g = rng.integers(-2, 3, size=(140, 3)).astype(np.float32)
    g[:5] = q[:5]  # a query's duplicate in the gallery is a real match, not itself
    ql, gl = rng.integers(0, 8, size=60), rng.integers(0, 8, size=140)
    ql[0] = 50  # a query with no gallery sample of its class
    names = ["e_recall@1", "e_recall@5", "e_recall@100", "mAP_c", "mAP_1000", *RANK]
    v = vals(None, None, names, query=(q, ql), gallery=(g, gl), backend=backend)
    order = ref_qg_order(q, g, None)
    for k in (1, 5, 100):
        ref = np.mean([ql[i] in gl[order[i][:k]] for i in range(60)])
        assert v[f"e_recall@{k}"] == pytest.approx(ref, abs=1e-12)
    ref = ref_rank_metrics(order, ql, gl)
    for m in RANK:
        assert v[m] == pytest.approx(ref[m], abs=1e-12), m
    aps = []
    for i in range(60):
        rel = gl[order[i]] == ql[i]
        f = int(rel.sum()) + 1  # gallery members plus the query, as the original counts the class
        prec = np.cumsum(rel) / np.arange(1, 141)
        aps.append((prec * rel)[:f].sum() / f)
    assert v["mAP_c"] == pytest.approx(np.mean(aps), abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_gallery_selectors_exclude_shared_rows(backend):
    rng = np.random.default_rng(31)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    y = rng.integers(0, 10, size=120)
    query = np.arange(0, 50)
    gallery = np.arange(30, 120)  # rows 30..49 are in both: never their own neighbour
    names = ["e_recall@1", "e_recall@20", "c_map_at_r", *RANK]
    v = vals(x, y, names, query=query, gallery=gallery, backend=backend)
    own = np.where(query >= 30, query - 30, -1)
    order = ref_qg_order(x[query], x[gallery], own)
    ref = ref_rank_metrics(order, y[query], y[gallery])
    for m in RANK:
        assert v[m] == pytest.approx(ref[m], abs=1e-12), m
    for k in (1, 20):
        assert v[f"e_recall@{k}"] == pytest.approx(np.mean([y[query][i] in y[gallery][order[i][:k]] for i in range(50)]))
    c_order = ref_qg_order(x[query], x[gallery], own, "cosine")
    assert v["c_map_at_r"] == pytest.approx(ref_rank_metrics(c_order, y[query], y[gallery])["map_at_r"], abs=1e-12)
    # boolean masks select the same rows; query = gallery = everything is the self-search
    mask_q, mask_g = np.isin(np.arange(120), query), np.isin(np.arange(120), gallery)
    assert vals(x, y, names, query=mask_q, gallery=mask_g, backend=backend) == v
    everything = np.arange(120)
    assert vals(x, y, names, query=everything, gallery=everything) == vals(x, y, names)


def test_query_gallery_clustering_uses_the_union_and_inputs_are_checked():
    rng = np.random.default_rng(32)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=50)
    names = ["nmi", "f1", "dists@intra", "rho_spectrum@1"]
    a = evaluate(x, y, names, query=np.arange(0, 30), gallery=np.arange(20, 50), backend="torch")
    assert a == evaluate(x, y, names, backend="torch")
    b = evaluate(None, None, names, query=(x[:20], y[:20]), gallery=(x[20:], y[20:]), backend="torch")
    assert b == a
    with pytest.raises(ValueError, match="both query and gallery"):
        evaluate(x, y, names, query=np.arange(5))
    with pytest.raises(ValueError, match="pass None"):
        evaluate(x, y, names, query=(x, y), gallery=(x, y))
    with pytest.raises(ValueError, match="must not repeat"):
        evaluate(x, y, names, query=[0, 0], gallery=[1, 2])
    _, missing = compute_metrics(None, None, ["e_recall@1", "e_recall@4", "map_at_r"], query=(x[:3], [7, 7, 8]),
                                 gallery=(x[3:6], [1, 2, 3]))
    assert set(missing) == {"e_recall@1", "e_recall@4", "map_at_r"} and "gallery" in missing["e_recall@1"]
    _, missing = compute_metrics(None, None, ["e_recall@3", "e_recall@4"], query=(x[:3], [1, 2, 3]),
                                 gallery=(x[3:6], [1, 2, 3]))
    assert set(missing) == {"e_recall@4"}


# ----------------------------------------------------------------------------- k-means


def plain_lloyd(x: torch.Tensor, init: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Textbook Lloyd with the package's rules (ties to the lower id, empty clusters at the farthest points)."""
    c = init.clone()
    for _ in range(iterations + 1):
        d = torch.cdist(x.double(), c.double()) ** 2
        ids = d.argmin(1)
        if _ == iterations:
            break
        sizes = torch.bincount(ids, minlength=c.shape[0])
        new = torch.zeros_like(c, dtype=torch.float64).index_add_(0, ids, x.double())
        new = (new / sizes.clamp_min(1).unsqueeze(1)).float()
        empty = torch.nonzero(sizes == 0).flatten()
        new[empty] = c[empty]
        if empty.numel():
            far = torch.sort(d.gather(1, ids[:, None]).squeeze(1), descending=True, stable=True).indices
            new[empty] = x[far[: empty.numel()]]
        if torch.equal(new, c):
            break
        c = new
    return c, ids


@pytest.mark.parametrize("k", [7, 60])
@pytest.mark.parametrize("lists", [True, False])
def test_candidate_list_kmeans_equals_plain_lloyd(k, lists, monkeypatch):
    monkeypatch.setattr(M.lloyd, "PLAIN_LLOYD_MAX", 0 if lists else 1 << 40)
    rng = np.random.default_rng(40 + k)
    centres = rng.normal(size=(k, 5)) * 3
    x = torch.tensor(centres[rng.integers(0, k, 900)] + rng.normal(size=(900, 5)), dtype=torch.float32)
    init = x[torch.randperm(900, generator=torch.Generator().manual_seed(k))[:k]].clone()
    for iterations in (0, 1, 3, 20):
        c, ids = M.kmeans(x, k, init=init, iterations=iterations)
        rc, rids = plain_lloyd(x, init, iterations)
        assert torch.equal(ids, rids), iterations
        torch.testing.assert_close(c, rc, rtol=0, atol=1e-5)


def test_kmeans_plus_plus_seeds_are_distinct_and_cover_separated_blobs():
    rng = np.random.default_rng(41)
    blobs = np.repeat(np.eye(12) * 1000, 30, axis=0) + rng.normal(size=(360, 12))
    x = torch.tensor(blobs, dtype=torch.float32)
    for seed in range(3):
        seeds = M.kmeans(x, 12, seed=seed, iterations=0)[0]
        nearest_blob = torch.cdist(seeds, torch.tensor(np.eye(12) * 1000, dtype=torch.float32)).argmin(1)
        assert sorted(nearest_blob.tolist()) == list(range(12))  # D² sampling: one seed per blob
    idx = M.lloyd.kmeans_plus_plus(x, 300, torch.Generator().manual_seed(0))
    assert len(set(idx.tolist())) == 300


def test_faiss_kmeans_starts_from_the_same_seeds():
    rng = np.random.default_rng(42)
    x = torch.tensor(rng.normal(size=(400, 4)), dtype=torch.float32)
    init = M.lloyd.kmeans_plus_plus_centroids(x, 10, seed=5)
    torch.testing.assert_close(init, M.kmeans(x, 10, seed=5, iterations=0)[0])
    c, ids = M.backends.faiss_kmeans(x, 10, seed=5, iterations=0, init=init)
    assert torch.equal(c, init) and torch.equal(ids, M.kmeans(x, 10, seed=5, iterations=0)[1])
    y = rng.integers(0, 10, 400)
    a = vals(x.numpy(), y, ["nmi"], seed=5, backend="faiss")["nmi"]
    b = vals(x.numpy(), y, ["nmi"], seed=5, backend="torch")["nmi"]
    assert abs(a - b) < 0.05


def test_eval_config_backend():
    from engine.config.schema import EvalConfig

    assert EvalConfig().backend == "auto" and EvalConfig(backend="faiss").backend == "faiss"
    with pytest.raises(ValueError):
        EvalConfig(backend="cuda")


# ----------------------------------------------------------------------------- segment selection (large-N paths)


SEGMENT_NAMES = [
    "e_recall@1", "e_recall@4", "e_recall@30", "e_recall@200", "c_recall@2", "c_recall@40", "mAP_c", "c_mAP_c",
    *RANK, *("c_" + m for m in RANK),
]  # fmt: skip


@pytest.mark.parametrize("kind", ["grid", "normal"])
@pytest.mark.parametrize("segment", [1, 3, 8])
def test_segment_selection_equals_whole_row_selection(kind, segment, monkeypatch):
    # the galleries here are too small for the segment path: force it and compare with the whole-row path
    rng = np.random.default_rng(50)
    x, _ = random_set(kind, n=300, seed=6)
    y = rng.integers(0, 60, size=300)  # classes of ~5: many first hits lie beyond the selected depth
    y[-1] = 999
    reference = vals(x, y, SEGMENT_NAMES, chunk_size=64)
    knn_reference = {k: M.knn(torch.tensor(x), k) for k in (1, 5, 12)}
    assert M.neighbours.segment_width(300, 13) == 0
    monkeypatch.setattr(M.neighbours, "SEGMENT", segment)
    monkeypatch.setattr(M.neighbours, "SEGMENT_MIN_RATIO", 1)
    assert M.neighbours.segment_width(300, 13) == segment
    for chunk in (64, 300):
        assert vals(x, y, SEGMENT_NAMES, chunk_size=chunk) == reference
    for k, ref in knn_reference.items():
        assert torch.equal(M.knn(torch.tensor(x), k, chunk_size=37), ref), k
    q, g, names = np.arange(0, 200), np.arange(100, 300), [*SEGMENT_NAMES[:3], *RANK]
    qg = vals(x, y, names, query=q, gallery=g)
    monkeypatch.setattr(M.neighbours, "SEGMENT_MIN_RATIO", 10**9)  # whole rows again
    assert vals(x, y, names, query=q, gallery=g) == qg


def test_count_before_matches_a_full_count(monkeypatch):
    rng = np.random.default_rng(51)
    dist = torch.tensor(rng.integers(0, 6, size=(40, 203)), dtype=torch.float32)  # ties everywhere
    value = dist[torch.arange(40), torch.tensor(rng.integers(0, 203, size=40))]
    pos = torch.tensor(rng.integers(0, 203, size=40))
    cols = torch.arange(203)
    ref = ((dist < value[:, None]) | ((dist == value[:, None]) & (cols < pos[:, None]))).sum(1)
    for segment in (1, 7, 64, 500):
        monkeypatch.setattr(M.neighbours, "SEGMENT", segment)
        assert torch.equal(M.neighbours.count_before(dist, value, pos), ref), segment


@pytest.mark.parametrize("segment", [0, 4])
def test_seeded_kmeans_equals_plain_lloyd_from_its_seeds(segment, monkeypatch):
    # the candidate-list k-means from its own k-means++ seeding (first assignment found while seeding)
    monkeypatch.setattr(M.lloyd, "PLAIN_LLOYD_MAX", 0)
    if segment:  # force the segment selection of the full assignment passes
        monkeypatch.setattr(M.neighbours, "SEGMENT", segment)
        monkeypatch.setattr(M.neighbours, "SEGMENT_MIN_RATIO", 1)
    rng = np.random.default_rng(52)
    centres = rng.normal(size=(60, 5)) * 3
    x = torch.tensor(centres[rng.integers(0, 60, 900)] + rng.normal(size=(900, 5)), dtype=torch.float32)
    x[450:470] = x[:20]  # duplicates
    for k, seed in ((60, 0), (300, 1)):
        init = M.lloyd.kmeans_plus_plus_centroids(x, k, seed=seed)
        for iterations in (0, 1, 3, 20):
            c, ids = M.kmeans(x, k, seed=seed, iterations=iterations)
            rc, rids = plain_lloyd(x, init, iterations)
            assert torch.equal(ids, rids), (k, iterations)
            torch.testing.assert_close(c, rc, rtol=0, atol=1e-5)


def test_faiss_backend_without_faiss_says_which_extra_to_install(monkeypatch):
    from engine.metrics import backends

    monkeypatch.setattr(backends, "_faiss", False)  # as if neither faiss-cpu nor faiss-gpu were installed
    assert backends.resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match=r"dmltui\[faiss\].*dmltui\[gpu\]"):
        backends.resolve_backend("faiss", torch.device("cpu"))
