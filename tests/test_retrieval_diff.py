"""What two runs retrieve differently (dmltui.retrieval_diff), against a brute-force nearest-neighbour computation on
hand-made embeddings of the same images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dmltui.inspect import Inspection
from dmltui.retrieval_diff import DifferentImages, RetrievalDiff
from engine.embed import Embeddings
from engine.metrics.per_query import query_results

CLASSES = ["001.Albatross", "002.Auklet", "003.Blackbird", "004.Bobolink"]


def inspection(vectors: np.ndarray, labels: np.ndarray, paths: list[str] | None = None) -> Inspection:
    paths = paths or [f"/data/img_{i:03d}.jpg" for i in range(len(labels))]
    embeddings = Embeddings(vectors.astype(np.float32), labels.astype(np.int64), paths, CLASSES,
                            {"name": "best", "path": None, "epoch": 3}, split="test")
    return Inspection(Path("/runs/x"), embeddings, query_results(embeddings.vectors, embeddings.labels, k=3))


def brute_nearest(vectors: np.ndarray) -> np.ndarray:
    """Each row's nearest other row (Euclidean; ties by the lower index)."""
    d = ((vectors[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return d.argmin(1)


@pytest.fixture
def two_runs():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 10)
    centres = rng.standard_normal((4, 8)) * 3
    a = centres[labels] + rng.standard_normal((40, 8)) * 1.5  # a good run
    b = centres[labels] + rng.standard_normal((40, 8)) * 4.0  # a worse one
    b[labels == 3] = centres[3] + rng.standard_normal((10, 8)) * 0.2  # but better on class 3
    return labels, a, b


def test_the_queries_each_run_alone_gets_right_match_brute_force(two_runs):
    labels, a, b = two_runs
    diff = RetrievalDiff(inspection(a, labels), inspection(b, labels))
    right_a = labels[brute_nearest(a)] == labels
    right_b = labels[brute_nearest(b)] == labels
    assert diff.only_a().tolist() == np.flatnonzero(right_a & ~right_b).tolist()
    assert diff.only_b().tolist() == np.flatnonzero(right_b & ~right_a).tolist()
    assert diff.counts() == {"queries": 40, "both_right": int((right_a & right_b).sum()),
                             "only_a": int((right_a & ~right_b).sum()), "only_b": int((right_b & ~right_a).sum()),
                             "both_wrong": int((~right_a & ~right_b).sum())}
    assert diff.counts()["only_a"] > 0 and diff.counts()["only_b"] >= 0


def test_per_class_recall_side_by_side_the_largest_difference_first(two_runs):
    labels, a, b = two_runs
    diff = RetrievalDiff(inspection(a, labels), inspection(b, labels))
    right_a = labels[brute_nearest(a)] == labels
    right_b = labels[brute_nearest(b)] == labels
    rows = diff.per_class()
    by_name = {row["class"]: row for row in rows}
    for c, name in enumerate(["Albatross", "Auklet", "Blackbird", "Bobolink"]):
        assert by_name[name]["size"] == 10
        assert by_name[name]["a_recall_at_1"] == pytest.approx(right_a[labels == c].mean())
        assert by_name[name]["b_recall_at_1"] == pytest.approx(right_b[labels == c].mean())
        assert by_name[name]["difference"] == pytest.approx(right_a[labels == c].mean() - right_b[labels == c].mean())
    assert [abs(r["difference"]) for r in rows] == sorted((abs(r["difference"]) for r in rows), reverse=True)


def test_a_query_shows_its_neighbours_in_both_runs_and_the_report_leads_with_the_classes_that_differ(two_runs):
    labels, a, b = two_runs
    diff = RetrievalDiff(inspection(a, labels), inspection(b, labels))
    row = int(diff.only_a()[0])
    query = diff.query(row)
    assert query["row"] == row and query["class"] == diff.a.class_of(row)
    assert query["a"]["neighbours"][0]["row"] == brute_nearest(a)[row] and query["a"]["neighbours"][0]["correct"]
    assert query["b"]["neighbours"][0]["row"] == brute_nearest(b)[row] and not query["b"]["neighbours"][0]["correct"]
    report = diff.report(examples=2, classes=2)
    assert len(report["only_a_queries"]) == min(2, len(diff.only_a())) and len(report["per_class"]) == 2
    assert report["recall_at_1_difference"] == pytest.approx(diff.a.results.recall_at_1 - diff.b.results.recall_at_1)
    first_class = report["per_class"][0]["class"]
    in_first = [q for q in diff.only_a().tolist() if diff.a.class_of(q) == first_class]
    assert in_first and report["only_a_queries"][0]["row"] == in_first[0]  # examples: the classes that differ most
    with pytest.raises(ValueError, match=r"--query 40: the test split has rows 0\.\.39"):
        diff.query(40)


def test_runs_of_different_images_are_refused_saying_how_they_differ(two_runs):
    labels, a, b = two_runs
    with pytest.raises(DifferentImages, match="40 images against 39"):
        RetrievalDiff(inspection(a, labels), inspection(b[:39], labels[:39]))
    other = [f"/data/img_{i:03d}.jpg" for i in range(39)] + ["/elsewhere/z.jpg"]
    with pytest.raises(DifferentImages, match="first at image 39: /data/img_039.jpg against /elsewhere/z.jpg"):
        RetrievalDiff(inspection(a, labels), inspection(b, labels, other))
