"""Per-query retrieval results (engine.metrics.per_query), engine.embed and its cache, and `dmltui inspect`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import dmltui

from engine import embed as embedding
from engine.embed import CheckpointNotFound, EmbedError, embed
from engine.io import atomic_torch_save
from engine.metrics import compute_metrics
from engine.metrics.per_query import query_results
from engine.rundir import RunDir


def logged(run_dir: Path, epoch: int, split: str = "test") -> dict:
    return next(r["metrics"] for r in RunDir(run_dir).read_metrics()
                if r["kind"] == "eval" and r["epoch"] == epoch and r["split"] == split)


# --------------------------------------------------------------------------- per-query results against loops


def loop_reference(x: np.ndarray, labels: np.ndarray, k: int):
    """Neighbours, first-hit ranks and MAP@R APs by brute force: a full stable sort of every distance row."""
    n = len(x)
    dist = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(axis=2))
    neighbours, first_hit, ap = [], [], []
    for q in range(n):
        others = [j for j in range(n) if j != q]
        order = sorted(others, key=lambda j: (dist[q, j], j))
        rel = [labels[j] == labels[q] for j in order]
        neighbours.append(order[:k])
        first_hit.append(rel.index(True) + 1 if any(rel) else 0)
        r = sum(rel)
        ap.append(sum(rel[i] * sum(rel[: i + 1]) / (i + 1) for i in range(r)) / r if r else np.nan)
    return np.array(neighbours), np.array(first_hit), np.array(ap), dist


def test_per_query_results_match_a_brute_force_loop_ties_included():
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, size=(60, 3)).astype(np.float32)  # small integers: many exact ties
    x[7] = x[8]  # a duplicate: distance 0
    labels = rng.integers(0, 7, 60)
    labels[59] = 99  # a class of one: no first hit, no AP
    found = query_results(x, labels, k=5)
    neighbours, first_hit, ap, dist = loop_reference(x, labels, 5)
    assert np.array_equal(found.neighbours, neighbours)
    assert np.array_equal(found.first_hit, first_hit)
    np.testing.assert_allclose(found.average_precision, ap, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(found.distances, np.take_along_axis(dist, neighbours, 1), rtol=1e-6)
    assert found.distances[7, 0] == 0.0 and found.neighbours[7, 0] == 8
    assert np.array_equal(found.correct, labels[neighbours] == labels[:, None])
    assert found.first_hit[59] == 0 and np.isnan(found.average_precision[59]) and found.relevant[59] == 0

    sizes, recall = found.per_class()
    for i, label in enumerate(found.classes):
        members = labels == label
        assert sizes[i] == members.sum() and recall[i] == pytest.approx(found.correct[members, 0].mean())
    pairs: dict = {}
    for q in range(60):
        for j in neighbours[q]:
            if labels[j] != labels[q]:
                a, b = sorted((int(np.searchsorted(found.classes, labels[q])), int(np.searchsorted(found.classes, labels[j]))))
                pairs[a, b] = pairs.get((a, b), 0) + 1
    expected = sorted(((a, b, c) for (a, b), c in pairs.items()), key=lambda p: (-p[2], p[0], p[1]))[:6]
    assert found.confused_pairs(6) == expected

    worst = found.worst()
    assert worst[-1] == 59  # no AP: last
    ranked = [(found.average_precision[q], -found.first_hit[q], q) for q in worst[:-1]]
    assert ranked == sorted(ranked)


@pytest.mark.parametrize("metric,prefix", [("euclidean", "e_"), ("cosine", "c_")])
def test_per_query_means_are_the_evaluations_figures(metric, prefix):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((700, 16)).astype(np.float32)
    labels = rng.integers(0, 40, 700)
    names = [f"{prefix}recall@1", f"{prefix}recall@4", f"{'c_' if prefix == 'c_' else ''}map_at_r",
             f"{'c_' if prefix == 'c_' else ''}mean_reciprocal_rank"]
    values, _ = compute_metrics(x, labels, names)
    found = query_results(x, labels, k=4, metric=metric)
    assert found.recall_at_1 == values[names[0]] == found.correct[:, 0].mean()
    assert found.correct.any(axis=1).mean() == values[names[1]]
    assert found.map_at_r == values[names[2]]
    counted = found.relevant >= 1
    assert np.mean(1.0 / found.first_hit[counted]) == pytest.approx(values[names[3]], rel=1e-12)


def test_per_query_rejects_bad_input():
    with pytest.raises(ValueError, match="k must be in 1..N-1 = 1..2"):
        query_results(np.zeros((3, 2)), [0, 0, 1], k=3)
    with pytest.raises(ValueError, match="NaN"):
        query_results(np.full((3, 2), np.nan), [0, 0, 1], k=1)
    with pytest.raises(ValueError, match="labels of shape"):
        query_results(np.zeros((3, 2)), [0, 0], k=1)


# --------------------------------------------------------------------------- a finished quickstart run


def test_per_query_results_of_the_best_checkpoint_are_the_logged_test_metrics(quickstart_copy):
    from dmltui.inspect import inspect_run

    found = inspect_run(quickstart_copy, k=10, device="cpu")
    epoch = found.embeddings.checkpoint["epoch"]
    assert epoch == 2 and found.embeddings.checkpoint["name"] == "best"
    metrics = logged(quickstart_copy, epoch)
    results = found.results
    assert results.correct[:, 0].mean() == metrics["e_recall@1"]  # exactly: the evaluation's embeddings and kNN
    assert results.correct[:, :2].any(axis=1).mean() == metrics["e_recall@2"]
    assert results.map_at_r == metrics["map_at_r"]
    assert np.nanmean(results.average_precision) == pytest.approx(metrics["map_at_r"], rel=1e-12)
    assert len(found.embeddings) == 1560 and len(results.classes) == 78 and results.k == 10
    summary = found.summary()
    assert summary["recall_at_1"] == metrics["e_recall@1"] and summary["split"] == "test" and not summary["cached"]
    worst = found.worst_queries(3)
    assert [q["ap"] for q in worst] == sorted(q["ap"] for q in worst)
    assert all(Path(q["path"]).is_file() and len(q["neighbours"]) == 10 for q in worst)
    assert worst[0]["class"] in {c["class"] for c in found.classes()}


def test_the_cache_is_reused_and_a_changed_checkpoint_invalidates_it(quickstart_copy, monkeypatch):
    first = embed(quickstart_copy, "test", device="cpu")
    cache = quickstart_copy / "embeddings" / "test-best.npz"
    assert not first.cached and first.cache_path == cache and cache.is_file()
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".tmp")]
    written = cache.stat().st_mtime_ns

    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded again instead of reading the cache")

    monkeypatch.setattr("engine.evaluation.embed_dataset", no_embedding)
    again = embed(quickstart_copy, "test", device="cpu")
    assert again.cached and cache.stat().st_mtime_ns == written
    assert np.array_equal(again.vectors, first.vectors) and again.paths == first.paths
    assert np.array_equal(again.labels, first.labels) and again.class_names == first.class_names

    best = Path(first.checkpoint["path"])
    os.utime(best, ns=(best.stat().st_atime_ns, best.stat().st_mtime_ns + 10**9))  # touched, same bytes
    assert embed(quickstart_copy, "test", device="cpu").cached  # the SHA-256 still matches

    monkeypatch.undo()
    state = torch.load(best, weights_only=False)
    state["model"]["head.bias"] += 0.5
    atomic_torch_save(best, state)  # what the trainer does on a new best epoch
    changed = embed(quickstart_copy, "test", device="cpu")
    assert not changed.cached and not np.array_equal(changed.vectors, first.vectors)
    assert changed.checkpoint["fingerprint"]["sha256"] != first.checkpoint["fingerprint"]["sha256"]
    assert embed(quickstart_copy, "test", device="cpu").cached
    assert not embed(quickstart_copy, "test", device="cpu", use_cache=False).cached


def test_embed_images_and_checkpoints_by_name_path_or_file(quickstart_copy, data_root):
    last = embed(quickstart_copy, "test", checkpoint="last", device="cpu")
    assert (quickstart_copy / "embeddings" / "test-last.npz").is_file() and last.checkpoint["name"] == "last"
    images = last.paths[:3]
    loose = embed(quickstart_copy / "checkpoints" / "last.pt", images, device="cpu")
    assert loose.split is None and loose.labels.tolist() == [-1, -1, -1] and loose.paths == images
    np.testing.assert_allclose(loose.vectors, last.vectors[:3], atol=1e-5)
    folder = Path(images[0]).parent.parent  # the dataset's class folders
    by_folder = embed(quickstart_copy, folder, device="cpu", batch_size=512)
    assert len(by_folder.class_names) == 156 and by_folder.labels.max() == 155
    assert not (quickstart_copy / "embeddings" / f"{folder.name}-best.npz").exists()  # only splits are cached


def test_embed_errors_name_what_is_wrong(quickstart_copy, tmp_path):
    with pytest.raises(CheckpointNotFound, match="last.pt does not exist"):
        (quickstart_copy / "checkpoints" / "last.pt").unlink()
        embed(quickstart_copy, "test", checkpoint="last")
    with pytest.raises(EmbedError, match="is not a run directory"):
        embed(tmp_path, "test")
    with pytest.raises(EmbedError, match="neither a split"):
        embed(quickstart_copy, "validation")
    with pytest.raises(EmbedError, match="the run has no val split"):
        embed(quickstart_copy, "val")
    garbage = quickstart_copy / "checkpoints" / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(EmbedError, match="garbage.pt is not a readable checkpoint"):
        embed(quickstart_copy, "test", checkpoint=garbage)
    for checkpoint in (quickstart_copy / "checkpoints").glob("best_*.pt"):
        checkpoint.unlink()
    with pytest.raises(CheckpointNotFound, match="has no best checkpoint"):
        embedding.resolve_checkpoint(quickstart_copy, "best")
    assert not (quickstart_copy / "embeddings").exists()


# --------------------------------------------------------------------------- the CLI (the real entry point)


def test_inspect_cli_json_and_png(quickstart_copy, tmp_path):
    png = tmp_path / "worst.png"
    result = dmltui("inspect", str(quickstart_copy), "--json", "--png", str(png), "-k", "5", "--worst", "4",
                    "--device", "cpu")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    metrics = logged(quickstart_copy, report["checkpoint"]["epoch"])
    assert report["recall_at_1"] == metrics["e_recall@1"] and report["map_at_r"] == metrics["map_at_r"]
    assert report["k"] == 5 and report["images"] == 1560 and report["classes"] == 78 and not report["cached"]
    assert report["checkpoint"]["chosen"] == {"split": "test", "metric": "e_recall@1"}  # no validation split
    assert len(report["worst_queries"]) == 4 and all(len(q["neighbours"]) == 5 for q in report["worst_queries"])
    assert {"distance", "correct", "class", "path"} <= set(report["worst_queries"][0]["neighbours"][0])
    assert len(report["per_class"]) == 78 and report["confused_pairs"][0]["count"] >= report["confused_pairs"][-1]["count"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as image:
        assert image.width > 500 and image.height > 400
    again = dmltui("inspect", str(quickstart_copy), "--json", "-k", "5", "--device", "cpu")
    assert json.loads(again.stdout)["cached"] and json.loads(again.stdout)["recall_at_1"] == report["recall_at_1"]


def test_inspect_cli_by_run_id_with_a_table_and_a_projection(quickstart_copy, tmp_path):
    imported = dmltui("import", str(quickstart_copy), "--json")
    assert imported.returncode == 0, imported.stderr
    run_id = json.loads(imported.stdout)[0]["id"]
    projection = tmp_path / "map.png"
    result = dmltui("inspect", run_id[:15], "--projection", str(projection), "--method", "tsne", "--worst", "3",
                    "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "test split, best checkpoint (epoch 2)" in result.stdout and "the 3 worst queries" in result.stdout
    assert ("best checkpoint chosen on the test split by its best R@1: the run had no validation split, so this is "
            "model selection on test data, which is optimistic") in " ".join(result.stdout.split())
    assert "most confused pairs" in result.stdout
    assert projection.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args,code,message", [
    (["no-such-run"], 3, "no run with id 'no-such-run'"),
    (["RUN", "--checkpoint", "/nowhere/x.pt"], 3, "checkpoint /nowhere/x.pt does not exist"),
    (["RUN", "--png", "OUT/worst.jpg"], 2, "--png OUT/worst.jpg: the file must end in .png"),
    (["RUN", "--png", "OUT/missing/worst.png"], 2, "folder OUT/missing does not exist"),
    (["RUN", "-k", "5000"], 2, "-k 5000: the test split has 1560 images, so k must be in 1..1559"),
])
def test_inspect_cli_errors_are_one_line_with_an_exit_code_and_leave_nothing(quickstart_copy, tmp_path, args, code,
                                                                             message):
    out = tmp_path / "out"
    out.mkdir()
    args = [str(quickstart_copy) if a == "RUN" else a.replace("OUT", str(out)) for a in args]
    result = dmltui("inspect", *args, "--device", "cpu")
    assert result.returncode == code
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message.replace("OUT", str(out)) in line
    assert list(out.iterdir()) == []
    assert not list(quickstart_copy.rglob(".tmp-*"))


# --------------------------------------------------------------------------- inspect A --against B


@pytest.fixture
def two_quickstart_runs(quickstart_copy, tmp_path) -> tuple[Path, Path]:
    """A: the finished quickstart run; B: a copy whose checkpoints hold A's weights with noise (a worse run of the same
    images)."""
    import shutil

    other = Path(shutil.copytree(quickstart_copy, tmp_path / "noisy-run"))
    generator = torch.Generator().manual_seed(0)
    for checkpoint in (other / "checkpoints").glob("*.pt"):
        state = torch.load(checkpoint, weights_only=False)
        state["model"] = {name: value + 0.05 * value.std().nan_to_num() * torch.randn(value.shape, generator=generator)
                          if value.is_floating_point() and value.numel() > 1 else value
                          for name, value in state["model"].items()}
        atomic_torch_save(checkpoint, state)
    return quickstart_copy, other


def test_inspect_against_reports_what_the_library_computes(two_quickstart_runs, tmp_path):
    from dmltui.inspect import inspect_run
    from dmltui.retrieval_diff import RetrievalDiff

    a, b = two_quickstart_runs
    report = json.loads(dmltui("inspect", str(a), "--against", str(b), "--json", "--worst", "3", "-k", "5",
                               "--device", "cpu").stdout)
    direct = RetrievalDiff(inspect_run(a, k=5, device="cpu"), inspect_run(b, k=5, device="cpu"))
    counts = direct.counts()
    assert {key: report[key] for key in counts} == counts and counts["only_a"] + counts["only_b"] > 0
    assert report["recall_at_1_difference"] == pytest.approx(direct.a.results.recall_at_1 - direct.b.results.recall_at_1)
    expected = direct.report(examples=3)
    assert [q["row"] for q in report["only_a_queries"]] == [q["row"] for q in expected["only_a_queries"]]
    assert [q["row"] for q in report["only_b_queries"]] == [q["row"] for q in expected["only_b_queries"]]
    assert all(q["a"]["neighbours"][0]["correct"] and not q["b"]["neighbours"][0]["correct"]
               for q in report["only_a_queries"])
    row = (report["only_a_queries"] or report["only_b_queries"])[0]["row"]
    shown = json.loads(dmltui("inspect", str(a), "--against", str(b), "--json", "--query", str(row), "-k", "5",
                              "--device", "cpu").stdout)
    assert shown["query"] == json.loads(json.dumps(direct.query(row)))
    text = dmltui("inspect", str(a), "--against", str(b), "--worst", "3", "-k", "5", "--device", "cpu")
    assert text.returncode == 0, text.stderr
    assert (f"{counts['queries']} test queries at rank 1: A right, B wrong {counts['only_a']} · B right, A wrong "
            f"{counts['only_b']}") in text.stdout
    top = direct.per_class()[0]
    assert "recall@1 per class, the largest differences first:" in text.stdout and top["class"] in text.stdout
    png = tmp_path / "query.png"
    drawn = dmltui("inspect", str(a), "--against", str(b), "--query", str(row), "--png", str(png), "-k", "5",
                   "--device", "cpu")
    assert drawn.returncode == 0, drawn.stderr
    assert f"query {row}: " in drawn.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,code,message", [
    (["--query", "3"], 2, "--query ROW shows one query in two runs: give --against RUN too"),
    (["--against", "B", "--projection", "OUT/map.png"], 2, "--projection maps one run's split: not with --against"),
    (["--against", "B", "--png", "OUT/q.png"], 2, "--png with --against draws one query in both runs: give --query ROW"),
    (["--against", "B", "--query", "99999"], 2, "--query 99999: the test split has rows 0..1559"),
    (["--against", "no-such-run"], 3, "no run with id 'no-such-run'"),
    (["--against", "B", "--checkpoint", "/nowhere/x.pt"], 3, "run A ("),
])
def test_inspect_against_errors_are_one_line_and_leave_nothing(two_quickstart_runs, tmp_path, args, code, message):
    a, b = two_quickstart_runs
    out = tmp_path / "out"
    out.mkdir()
    args = [str(b) if arg == "B" else arg.replace("OUT", str(out)) for arg in args]
    result = dmltui("inspect", str(a), *args, "--device", "cpu")
    assert result.returncode == code and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
    assert list(out.iterdir()) == []
