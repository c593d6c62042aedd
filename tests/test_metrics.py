"""Tests of engine.metrics: hand-made cases with known answers and slow loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.stats import entropy
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

import engine.metrics as M
from engine.metrics import check_metric_name, compute_metrics, evaluate, list_metrics


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: a single intra-op thread avoids OpenMP stalls on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- references


def ref_neighbours(x: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Full neighbour order of every query (self removed), ties by the lower index: N × (N−1)."""
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = -(xn @ xn.T)
    else:
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    out = []
    for i in range(len(x)):
        order = np.argsort(d[i], kind="stable")
        out.append(order[order != i])
    return np.array(out)


def ref_recall(x, labels, k, metric="euclidean") -> float:
    nb = ref_neighbours(x, metric)
    labels = np.asarray(labels)
    hits = [labels[i] in labels[nb[i, :k]] for i in range(len(labels))]
    return float(np.mean(hits))


def ref_map(x, labels, variant, metric="euclidean") -> float:
    nb = ref_neighbours(x, metric)
    labels = np.asarray(labels)
    n = len(labels)
    aps = []
    for i in range(n):
        f = int((labels == labels[i]).sum())
        limit = {"c": f, "1000": 1000, "lim": 1023}[variant]
        rel = (labels[nb[i]] == labels[i])[: min(limit, n - 1)]
        precision_at = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        aps.append(float(precision_at[rel].sum()) / f)
    return float(np.mean(aps))


def ref_pair_f1(labels, clusters) -> float:
    table = contingency_matrix(labels, clusters)
    comb = lambda a: (np.asarray(a, dtype=np.float64) * (np.asarray(a) - 1) / 2).sum()  # noqa: E731
    tp = comb(table)
    p = tp / comb(table.sum(axis=0))
    r = tp / comb(table.sum(axis=1))
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def values(x, labels, names, **kw):
    vals, missing = compute_metrics(np.asarray(x, dtype=np.float32), labels, names, **kw)
    assert not missing, missing
    return vals


def col(*v):
    return np.array(v, dtype=np.float32)[:, None]


# ----------------------------------------------------------------------------- names


def test_list_metrics():
    assert list_metrics() == [
        "e_recall@<k>", "c_recall@<k>", "nmi", "c_nmi", "f1", "c_f1", "mAP_c", "c_mAP_c", "mAP_1000",
        "c_mAP_1000", "mAP_lim", "c_mAP_lim", "dists@intra", "dists@inter", "dists@intra_over_inter",
        "precision_at_1", "c_precision_at_1", "r_precision", "c_r_precision", "map_at_r", "c_map_at_r",
        "mean_reciprocal_rank", "c_mean_reciprocal_rank", "ami", "c_ami", "rho_spectrum@<m>",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "name",
    ["e_recall@1", "c_recall@16", "nmi", "c_f1", "mAP_c", "c_mAP_lim", "dists@intra_over_inter",
     "rho_spectrum@0", "rho_spectrum@-1", "rho_spectrum@10"],
)  # fmt: skip
def test_check_metric_name_accepts(name):
    check_metric_name(name)


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("e_recal@1", "did you mean 'e_recall@1'?"),
        ("recall@4", "did you mean 'e_recall@4'?"),
        ("NMI", "did you mean 'nmi'?"),
        ("map_1000", "did you mean 'mAP_1000'?"),
        ("e_recall@0", "k must be a positive integer"),
        ("c_recall@-2", "k must be a positive integer"),
        ("e_recall@x", "k must be a positive integer"),
        ("e_recall@", "k must be a positive integer"),
        ("rho_spectrum@1.5", "m must be an integer"),
        ("e_recall@01", "did you mean 'e_recall@1'?"),
        ("mAP", "unknown metric 'mAP'"),
        ("c_mAP", "unknown metric 'c_mAP'"),
    ],
)
def test_check_metric_name_rejects(name, fragment):
    with pytest.raises(ValueError) as err:
        check_metric_name(name)
    msg = str(err.value)
    assert fragment in msg and repr(name) in msg and "\n" not in msg


def test_unknown_message_lists_allowed():
    with pytest.raises(ValueError, match=r"allowed: e_recall@<k>, c_recall@<k>, nmi"):
        check_metric_name("e_recal@1")
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(np.zeros((3, 2)), [0, 0, 1], ["e_recall@1", "bogus"])


# ----------------------------------------------------------------------------- kNN and recall by hand


def test_recall_1d_by_hand():
    # 0 → 1, 1 → 0, 3 → 1 (then 0, then 7), 7 → 3
    x, y = col(0, 1, 3, 7), [10, 10, -5, -5]
    v = values(x, y, ["e_recall@1", "e_recall@2", "e_recall@3"])
    assert v == {"e_recall@1": 0.75, "e_recall@2": 0.75, "e_recall@3": 1.0}


def test_ties_go_to_the_lower_index():
    # query 0 has its two nearest at distance 1: index 1 (other class) and index 2 (own class)
    x, y = col(0, -1, 1, 10), [0, 1, 0, 1]
    assert M.knn(torch.tensor(x), 1)[0].item() == 1
    # 0 → 1 (tie, lower index) miss; 1 → 0 miss; 2 → 0 hit; 3 → 2 miss
    assert values(x, y, ["e_recall@1"])["e_recall@1"] == 0.25
    # a tie across the k-th place: four candidates at distance 1, k = 2 keeps the two lowest indices
    x = col(0, 1, -1, 1, -1, 5)
    for chunk in (1, 2, 100):
        nb = M.knn(torch.tensor(x), 2, chunk_size=chunk)
        assert nb[0].tolist() == [1, 2]
        assert nb[1].tolist() == [3, 0]


def test_duplicates_never_return_self():
    x = np.array([[0, 0], [0, 0], [5, 5], [5, 6], [5, 5]], dtype=np.float32)
    nb = M.knn(torch.tensor(x), 2)
    assert nb[0].tolist() == [1, 2] and nb[1].tolist() == [0, 2]
    assert nb[2].tolist() == [4, 3] and nb[4].tolist() == [2, 3]
    assert all(i not in row for i, row in enumerate(nb.tolist()))
    # identical points of different classes (0 and 1): each one's neighbour is its twin, a miss
    # 2 → 4 hit, 3 → 2 (tie with 4, lower index) miss, 4 → 2 hit
    v = values(x, [1, 2, 1, 2, 1], ["e_recall@1"])
    assert v["e_recall@1"] == pytest.approx(2 / 5)


def test_singleton_query_counts_as_miss():
    x, y = col(0, 1, 2, 10), [7, 7, 7, 99]
    v = values(x, y, ["e_recall@1", "e_recall@3", "mAP_c", "mAP_1000", "mAP_lim"])
    assert v["e_recall@1"] == 0.75 and v["e_recall@3"] == 0.75
    # class 7 queries: AP = (1/3)(1/1 + 2/2) = 2/3; the singleton: 0
    assert v["mAP_c"] == pytest.approx(0.5) and v["mAP_1000"] == pytest.approx(0.5)
    assert v["mAP_lim"] == pytest.approx(0.5)


def test_map_by_hand_with_a_tie():
    x, y = col(0, 1, 5, 2), ["A", "B", "A", "B"]
    v = values(x, y, ["mAP_c", "mAP_1000", "mAP_lim"])
    assert v["mAP_c"] == pytest.approx(3 / 16)
    assert v["mAP_1000"] == pytest.approx(13 / 48) and v["mAP_lim"] == pytest.approx(13 / 48)


def test_map_c_quirk_perfect_ranking_scores_f_minus_1_over_f():
    x, y = col(0, 0.1, 0.2, 50, 50.1, 50.2), [1, 1, 1, 2, 2, 2]
    v = values(x, y, ["mAP_c", "e_recall@1"])
    assert v["mAP_c"] == pytest.approx(2 / 3) and v["e_recall@1"] == 1.0


def test_cosine_against_euclidean_by_hand():
    x = np.array([[1, 0], [10, 0], [0, 1], [0, 3]], dtype=np.float32)
    v = values(x, [1, 1, 2, 2], ["e_recall@1", "c_recall@1", "c_mAP_c"])
    assert v["e_recall@1"] == 0.5 and v["c_recall@1"] == 1.0
    assert v["c_mAP_c"] == pytest.approx(0.5)  # each class of 2: (1/2)·1


# ----------------------------------------------------------------------------- kNN vs references


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_matches_reference_order(metric):
    rng = np.random.default_rng(1)
    # small integers: many exact ties in Euclidean distance, all exactly representable
    x = rng.integers(-2, 3, size=(120, 3)).astype(np.float64) if metric == "euclidean" else rng.normal(size=(120, 5))
    ref = ref_neighbours(x, metric)
    for k in (1, 5, 119):
        got = M.knn(torch.tensor(x), k, metric=metric, chunk_size=17).numpy()
        np.testing.assert_array_equal(got, ref[:, :k])


@pytest.mark.parametrize("space, metric", [("e", "euclidean"), ("c", "cosine")])
def test_recall_matches_reference(space, metric):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(150, 6)).astype(np.float32)
    y = rng.integers(0, 12, size=150) * 3 + 100
    ks = [1, 2, 4, 8, 30]
    v = values(x, y, [f"{space}_recall@{k}" for k in ks])
    for k in ks:
        assert v[f"{space}_recall@{k}"] == pytest.approx(ref_recall(x, y, k, metric), abs=1e-12)


def test_recall_with_ties_matches_reference():
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, size=(200, 2)).astype(np.float32)  # 25 distinct points: ties everywhere
    y = rng.integers(0, 5, size=200)
    v = values(x, y, ["e_recall@1", "e_recall@3", "e_recall@10"])
    for k in (1, 3, 10):
        assert v[f"e_recall@{k}"] == pytest.approx(ref_recall(x, y, k), abs=1e-12)


@pytest.mark.parametrize("space, metric", [("e", "euclidean"), ("c", "cosine")])
def test_map_matches_reference(space, metric):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(160, 4)).astype(np.float32)
    y = rng.integers(0, 7, size=160)
    pre = "" if space == "e" else "c_"
    v = values(x, y, [f"{pre}mAP_c", f"{pre}mAP_1000", f"{pre}mAP_lim"])
    for variant in ("c", "1000", "lim"):
        assert v[f"{pre}mAP_{variant}"] == pytest.approx(ref_map(x, y, variant, metric), abs=1e-12)


def test_map_rank_limits_matter_beyond_1000():
    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, size=(1100, 3)).astype(np.float32)  # exact distances, many ties
    y = rng.integers(0, 3, size=1100)
    v = values(x, y, ["mAP_1000", "mAP_lim", "e_recall@1"])
    ref_1000, ref_lim = ref_map(x, y, "1000"), ref_map(x, y, "lim")
    assert ref_1000 < ref_lim
    assert v["mAP_1000"] == pytest.approx(ref_1000, abs=1e-12)
    assert v["mAP_lim"] == pytest.approx(ref_lim, abs=1e-12)


def test_chunk_size_does_not_change_results():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(97, 5)).astype(np.float32)
    y = rng.integers(0, 9, size=97)
    names = ["e_recall@1", "e_recall@5", "c_recall@3", "mAP_c", "mAP_1000", "c_mAP_lim"]
    results = [compute_metrics(x, y, names, chunk_size=c)[0] for c in (1, 7, 4096)]
    assert results[0] == results[1] == results[2]
    nbs = [M.knn(torch.tensor(x), 20, chunk_size=c) for c in (1, 13, 4096)]
    assert torch.equal(nbs[0], nbs[1]) and torch.equal(nbs[0], nbs[2])


# ----------------------------------------------------------------------------- clustering


def blobs(n_per=20, classes=5, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = 100.0 * np.eye(dim)[:classes]  # distinct directions too, for the cosine variant
    x = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(classes) * 11 - 20, n_per)
    return x, y


def test_perfect_clustering_on_separated_blobs():
    x, y = blobs()
    v = values(x, y, ["nmi", "f1", "c_nmi", "c_f1"])
    assert v == pytest.approx({"nmi": 1.0, "f1": 1.0, "c_nmi": 1.0, "c_f1": 1.0})
    centroids, ids = M.kmeans(torch.tensor(x), 5, seed=3)
    for c in range(5):
        np.testing.assert_allclose(centroids[c].numpy(), x[ids.numpy() == c].mean(0), atol=1e-4)


@pytest.mark.parametrize("space", ["e", "c"])
def test_nmi_and_f1_match_sklearn_on_the_same_clusters(space):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = rng.integers(0, 9, size=300) * 5
    k = len(np.unique(y))
    clusters = M.cluster(torch.tensor(x), k, space=space, seed=11).numpy()
    pre = "" if space == "e" else "c_"
    v = values(x, y, [f"{pre}nmi", f"{pre}f1"], seed=11)
    assert v[f"{pre}nmi"] == pytest.approx(normalized_mutual_info_score(y, clusters, average_method="arithmetic"))
    assert v[f"{pre}f1"] == pytest.approx(ref_pair_f1(y, clusters))
    assert len(np.unique(clusters)) <= k


def test_kmeans_is_a_lloyd_fixed_point_and_deterministic():
    rng = np.random.default_rng(8)
    x = torch.tensor(rng.normal(size=(200, 3)), dtype=torch.float32)
    c1, ids1 = M.kmeans(x, 6, seed=5, iterations=200)
    c2, ids2 = M.kmeans(x, 6, seed=5, iterations=200)
    assert torch.equal(c1, c2) and torch.equal(ids1, ids2)
    d = torch.cdist(x, c1)
    assert torch.equal(ids1, d.argmin(1))
    for c in range(6):
        np.testing.assert_allclose(c1[c].numpy(), x[ids1 == c].mean(0).numpy(), atol=1e-5, rtol=0)
    # the same seed gives the same result through compute_metrics too
    y = np.random.default_rng(0).integers(0, 4, 200)
    assert compute_metrics(x.numpy(), y, ["nmi", "c_f1"], seed=2) == compute_metrics(x.numpy(), y, ["nmi", "c_f1"], seed=2)


def test_seed_drives_the_kmeans_plus_plus_draws():
    x = torch.tensor(np.random.default_rng(12).normal(size=(100, 4)), dtype=torch.float32)
    seeds = {s: M.kmeans(x, 5, seed=s, iterations=0)[0] for s in (0, 1)}
    assert not torch.equal(seeds[0], seeds[1])
    assert torch.equal(seeds[0], M.kmeans(x, 5, seed=0, iterations=0)[0])


def test_cosine_clustering_depends_on_direction_only():
    # two directions, each with tiny and huge norms: only the cosine clustering can recover them
    r = np.array([1.0, 1.1, 1.2, 100.0, 110.0, 120.0], dtype=np.float32)[:, None]
    x = np.concatenate([r * [1.0, 0.05], r * [0.05, 1.0]]).astype(np.float32)
    y = [0] * 6 + [1] * 6
    v = values(x, y, ["c_nmi", "c_f1", "nmi"])
    assert v["c_nmi"] == pytest.approx(1.0) and v["c_f1"] == pytest.approx(1.0)
    assert v["nmi"] < 0.5
    rng = np.random.default_rng(13)
    z = torch.tensor(rng.normal(size=(80, 3)), dtype=torch.float32)
    scale = torch.tensor(rng.uniform(0.01, 100.0, size=(80, 1)), dtype=torch.float32)
    assert torch.equal(M.cluster(z, 4, space="c", seed=1), M.cluster(z * scale, 4, space="c", seed=1))


def test_empty_cluster_is_reseeded_at_the_farthest_point():
    x = torch.tensor([[5.0], [6.0], [7.0], [15.0], [16.0]])
    # centroid 100 gets no point; the farthest point from its centroid is 5 (distance 1, ties with 7: lower index)
    centroids, ids = M.kmeans(x, 3, init=torch.tensor([[6.0], [100.0], [15.5]]))
    assert ids.tolist() == [1, 0, 0, 2, 2]
    assert centroids.flatten().tolist() == [6.5, 5.0, 15.5]


def test_cosine_assignment_uses_normalised_centroids():
    x = torch.tensor([[1.0, 0.0]])
    centroids = torch.tensor([[0.5, 0.0], [0.9, 0.3]])  # the nearer one (L2) is the less aligned one
    assert M.assign(x, centroids)[0].item() == 1
    assert M.assign(x, centroids, metric="cosine")[0].item() == 0
    rng = np.random.default_rng(14)
    z = torch.tensor(rng.normal(size=(300, 5)), dtype=torch.float32)
    unit = torch.nn.functional.normalize(z, dim=1)
    c, _ = M.kmeans(unit, 7, seed=6)
    expected = (unit @ torch.nn.functional.normalize(c, dim=1).T).argmax(1)
    assert torch.equal(M.cluster(z, 7, space="c", seed=6), expected)
    assert not torch.equal(expected, M.assign(unit, c)[0])  # the two rules differ on this data


def test_kmeans_survives_empty_clusters_and_duplicates():
    x = torch.tensor([[0.0, 0.0]] * 10 + [[5.0, 5.0]])
    centroids, ids = M.kmeans(x, 3, seed=0)
    assert ids.shape == (11,) and int(ids.min()) >= 0 and int(ids.max()) < 3
    assert len(set(ids[:10].tolist())) == 1 and ids[10] != ids[0]


def test_k_is_the_number_of_distinct_labels(monkeypatch):
    seen = []
    original = M.kmeans
    monkeypatch.setattr(M, "kmeans", lambda x, k, **kw: seen.append(k) or original(x, k, **kw))
    x, y = blobs(classes=3)
    compute_metrics(x, y, ["nmi", "f1"], backend="torch")  # one k-means serves both
    compute_metrics(x, y, ["c_nmi", "c_f1", "nmi"], backend="torch")  # one per space
    assert seen == [3, 3, 3]


def test_f1_hand_contingency():
    labels = [0, 0, 0, 1, 1, 2]
    clusters = [9, 9, 4, 4, 4, 4]
    # TP = C(2,2)+C(2,2) = 2; same class = 3+1 = 4; same cluster = 1+6 = 7 → P = 2/7, R = 1/2
    assert M.pair_f1(labels, clusters) == pytest.approx(4 / 11)
    assert M.pair_f1(clusters, labels) == pytest.approx(4 / 11)  # symmetric
    assert M.pair_f1([0, 1, 2], [0, 1, 2]) == 0.0  # no pairs at all: undefined → 0
    assert M.pair_f1([0, 0, 1, 1], [5, 5, 6, 6]) == 1.0


# ----------------------------------------------------------------------------- dists and rho


def test_dists_match_scipy():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(40, 5)).astype(np.float32) + 0.5
    y = np.array([3] * 10 + [8] * 15 + [-1] * 14 + [42])  # 42 is a singleton: left out of intra
    v = values(x, y, ["dists@intra", "dists@inter", "dists@intra_over_inter"])
    x64 = x.astype(np.float64)
    intra = []
    for c in (3, 8, -1):
        d = cdist(x64[y == c], x64[y == c], "cosine")
        n = len(d)
        intra.append(d.sum() / (n * n - n))
    cents = np.stack([x64[y == c].mean(0) for c in np.unique(y)])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    d = cdist(cents, cents, "cosine")
    inter = d.sum() / (len(d) ** 2 - len(d))
    assert v["dists@intra"] == pytest.approx(np.mean(intra), rel=1e-9)
    assert v["dists@inter"] == pytest.approx(inter, rel=1e-9)
    assert v["dists@intra_over_inter"] == pytest.approx(np.mean(intra) / inter, rel=1e-9)


def test_dists_by_hand():
    x = np.array([[1, 0], [0, 1], [-1, 0], [-2, 0]], dtype=np.float32)
    v = values(x, [0, 0, 1, 1], ["dists@intra", "dists@inter"])
    # class 0: cos 0 → 1; class 1: same direction → 0; centroids (.5,.5) and (-1.5,0): cos = -1/√2
    assert v["dists@intra"] == pytest.approx(0.5)
    assert v["dists@inter"] == pytest.approx(1 + 1 / math.sqrt(2))


def test_rho_spectrum_matches_scipy():
    rng = np.random.default_rng(10)
    x = (rng.normal(size=(50, 8)) * np.linspace(3, 0.5, 8) + 1.0).astype(np.float32)
    names = ["rho_spectrum@0", "rho_spectrum@1", "rho_spectrum@2", "rho_spectrum@-1", "rho_spectrum@-3"]
    v = values(x, np.arange(50) % 5, names)
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)  # uncentred, all D values
    assert isinstance(v["rho_spectrum@0"], list) and len(v["rho_spectrum@0"]) == 8
    np.testing.assert_allclose(v["rho_spectrum@0"], s / s.sum(), rtol=1e-6)
    for m in (1, 2, -1, -3):
        t = s[abs(m) - 1 :]
        t = t / t.sum()
        u = np.full_like(t, 1 / len(t))
        expected = entropy(u, t) if m > 0 else entropy(t, u)
        assert v[f"rho_spectrum@{m}"] == pytest.approx(expected, rel=1e-6), m
        assert isinstance(v[f"rho_spectrum@{m}"], float)


def test_rho_spectrum_of_a_flat_spectrum_is_zero():
    x = np.eye(4, dtype=np.float32) * 3.0
    v = values(x, [0, 0, 1, 1], ["rho_spectrum@1", "rho_spectrum@-1", "rho_spectrum@0"])
    assert v["rho_spectrum@1"] == pytest.approx(0.0, abs=1e-12)
    assert v["rho_spectrum@-1"] == pytest.approx(0.0, abs=1e-12)
    assert v["rho_spectrum@0"] == pytest.approx([0.25] * 4)


# ----------------------------------------------------------------------------- missing, inputs, shared work


def test_single_class_reports_missing_with_reason():
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    names = ["nmi", "f1", "c_nmi", "c_f1", "dists@inter", "dists@intra_over_inter", "e_recall@1", "dists@intra"]
    vals, missing = compute_metrics(x, [5] * 6, names)
    assert set(missing) == {"nmi", "f1", "c_nmi", "c_f1", "dists@inter", "dists@intra_over_inter"}
    assert all(isinstance(r, str) and r for r in missing.values())
    assert vals["e_recall@1"] == 1.0 and "dists@intra" in vals


def test_no_pairs_and_big_k_report_missing():
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    names = ["e_recall@1", "c_recall@2", "mAP_c", "c_mAP_1000", "dists@intra", "nmi", "f1"]
    vals, missing = compute_metrics(x, [1, 2, 3, 4], names)
    assert set(missing) == {"e_recall@1", "c_recall@2", "mAP_c", "c_mAP_1000", "dists@intra"}
    assert "two or more samples" in missing["e_recall@1"]
    assert set(vals) == {"nmi", "f1"} and vals["f1"] == 0.0
    vals, missing = compute_metrics(x, [1, 1, 2, 2], ["e_recall@3", "e_recall@4", "mAP_lim"])
    assert set(vals) == {"e_recall@3", "mAP_lim"} and set(missing) == {"e_recall@4"}
    out = evaluate(x, [1, 1, 2, 2], ["e_recall@4", "e_recall@1", "rho_spectrum@3"])
    assert out["e_recall@4"] is None and out["rho_spectrum@3"] is None and isinstance(out["e_recall@1"], float)
    assert list(out) == ["e_recall@4", "e_recall@1", "rho_spectrum@3"]


def test_non_finite_and_empty_inputs():
    x = np.ones((4, 2), dtype=np.float32)
    x[1, 0] = np.nan
    vals, missing = compute_metrics(x, [0, 0, 1, 1], ["e_recall@1", "nmi"])
    assert vals == {} and set(missing) == {"e_recall@1", "nmi"}
    vals, missing = compute_metrics(np.zeros((0, 3)), [], ["e_recall@1"])
    assert vals == {} and "e_recall@1" in missing
    with pytest.raises(ValueError, match="labels"):
        compute_metrics(np.zeros((3, 2)), [0, 1], ["nmi"])


def test_tensor_inputs_and_label_values_do_not_matter():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = rng.integers(0, 6, size=60)
    names = ["e_recall@1", "c_recall@2", "mAP_c", "nmi", "c_f1", "dists@intra", "rho_spectrum@2"]
    a = evaluate(x, y, names, seed=1)
    b = evaluate(torch.tensor(x, dtype=torch.float64), torch.tensor(y * 1000 - 77), names, seed=1, device="cpu")
    assert a == pytest.approx(b)
    assert all(isinstance(v, float) for v in a.values())


def test_only_what_is_needed_and_one_knn_per_space(monkeypatch):
    calls = []
    original = M.retrieval_pass
    monkeypatch.setattr(M, "retrieval_pass", lambda *a, **kw: calls.append(kw) or original(*a, **kw))
    monkeypatch.setattr(M, "cluster", lambda *a, **kw: pytest.fail("k-means ran without a clustering metric"))
    monkeypatch.setattr(M, "singular_values", lambda *a, **kw: pytest.fail("SVD ran without rho_spectrum"))
    x, y = blobs()
    compute_metrics(x, y, ["e_recall@1", "e_recall@8", "mAP_c", "mAP_1000", "c_recall@2", "dists@inter"])
    assert len(calls) == 2
    assert calls[0]["recall_ks"] == [1, 8] and calls[0]["map_variants"] == ["1000", "c"]
    assert calls[0]["metric"] == "euclidean" and calls[1]["metric"] == "cosine"
