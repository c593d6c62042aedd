"""What a run retrieves: per-query results of a split with a checkpoint (``dmltui inspect``, the TUI's Retrieval tab).

One function computes (:func:`inspect_run`: :func:`engine.embed.embed`, cached in the run
directory, then :func:`engine.metrics.per_query.query_results`); the rest shapes the
result for the JSON output, the PNG grid of the worst queries and the 2-D projection.
The CLI and the TUI call these and only display what they return.
"""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.embed import (
    CheckpointNotFound,
    Embeddings,
    EmbedError,
    Progress,
    cache_path,
    checkpoint_choice,
    embed,
    read_cache,
    resolve_checkpoint,
)
from engine.io import atomic_write_bytes
from engine.metrics.per_query import QueryResults, query_results

QUERY_ORDERS = ("ap", "rank", "class")  # how the worst queries can be ordered
PROJECTIONS = ("umap", "tsne")
_NUMBER_PREFIX = re.compile(r"^\d+\.")

__all__ = ["CheckpointNotFound", "EmbedError", "Inspection", "RunNotFound", "find_run_dir", "inspect_run"]


class RunNotFound(LookupError):
    """Neither a run directory nor a stored run id; the message says which."""


def find_run_dir(target: str | os.PathLike) -> Path:
    """A run directory (with config.toml), else the directory of the stored run with this id or unique id prefix."""
    path = Path(target)
    if (path / "config.toml").is_file():
        return path
    from dmltui import runs as run_ops

    try:
        return Path(run_ops.find(str(target))["run_dir"])
    except KeyError as error:  # RunNotFound, AmbiguousRunId
        raise RunNotFound(f"{error}; nor is {str(target)!r} a run directory") from None


def class_label(name: str) -> str:
    """A class folder's name as shown: without the numeric order prefix (``001.Black_footed_Albatross``)."""
    return _NUMBER_PREFIX.sub("", name)


@dataclass
class Inspection:
    run_dir: Path
    embeddings: Embeddings
    results: QueryResults

    @property
    def split(self) -> str:
        return self.embeddings.split or "images"

    def class_of(self, row: int) -> str:
        label = int(self.embeddings.labels[row])
        return class_label(self.embeddings.class_names[label]) if 0 <= label < len(self.embeddings.class_names) else "?"

    def class_name(self, index: int) -> str:
        """The name of the class at position *index* of :attr:`QueryResults.classes`."""
        label = int(self.results.classes[index])
        return class_label(self.embeddings.class_names[label]) if 0 <= label < len(self.embeddings.class_names) else "?"

    # ----------------------------------------------------------------------------- queries
    def query_order(self, rows: np.ndarray, by: str = "ap") -> np.ndarray:
        """*rows* ordered by AP (lowest first), first-hit rank (deepest first; none last) or class (then AP)."""
        if by not in QUERY_ORDERS:
            raise ValueError(f"unknown order {by!r}; allowed: {', '.join(QUERY_ORDERS)}")
        r = self.results
        ap = np.where(np.isnan(r.average_precision[rows]), np.inf, r.average_precision[rows])
        if by == "ap":
            keys = (rows, -r.first_hit[rows], ap)
        elif by == "rank":
            keys = (rows, ap, -r.first_hit[rows])
        else:
            keys = (rows, ap, np.asarray([self.class_of(int(q)) for q in rows]))
        return rows[np.lexsort(keys)]

    def query(self, row: int) -> dict[str, Any]:
        """One query: its image, class, AP, first-hit rank and k neighbours (path, class, distance, correct)."""
        r = self.results
        ap = r.average_precision[row]
        return {
            "row": int(row), "path": self.embeddings.paths[row], "class": self.class_of(row),
            "ap": None if math.isnan(ap) else float(ap), "first_hit": int(r.first_hit[row]) or None,
            "same_class": int(r.relevant[row]),
            "neighbours": [
                {"row": int(n), "path": self.embeddings.paths[n], "class": self.class_of(int(n)),
                 "distance": float(d), "correct": bool(c)}
                for n, d, c in zip(r.neighbours[row], r.distances[row], r.correct[row], strict=True)
            ],
        }

    def worst_queries(self, count: int, by: str = "ap") -> list[dict[str, Any]]:
        """The *count* queries with the lowest AP, ordered *by* ap, rank or class."""
        return [self.query(int(q)) for q in self.query_order(self.results.worst(count), by)]

    # ----------------------------------------------------------------------------- classes
    def classes(self) -> list[dict[str, Any]]:
        """Every class with its size and recall@1, the worst first (then the larger, then by name)."""
        sizes, recall = self.results.per_class()
        rows = [{"class": self.class_name(i), "size": int(sizes[i]), "recall_at_1": float(recall[i])}
                for i in range(len(sizes))]
        return sorted(rows, key=lambda c: (c["recall_at_1"], -c["size"], c["class"]))

    def confused_pairs(self, top: int = 10) -> list[dict[str, Any]]:
        return [{"classes": [self.class_name(a), self.class_name(b)], "count": count}
                for a, b, count in self.results.confused_pairs(top)]

    def summary(self) -> dict[str, Any]:
        r = self.results
        checkpoint = {key: self.embeddings.checkpoint.get(key) for key in ("name", "path", "epoch")}
        # a best checkpoint chosen on the test split flatters the split it is inspected on: say which split chose it
        checkpoint["chosen"] = checkpoint_choice(checkpoint["path"]) if checkpoint["path"] else None
        return {
            "run_dir": str(self.run_dir), "split": self.split, "checkpoint": checkpoint, "images": len(self.embeddings),
            "classes": len(r.classes), "k": r.k, "metric": r.metric, "cached": self.embeddings.cached,
            "recall_at_1": r.recall_at_1, "map_at_r": None if math.isnan(r.map_at_r) else r.map_at_r,
        }

    def report(self, worst: int = 10, pairs: int = 10) -> dict[str, Any]:
        """``dmltui inspect --json``: the summary, the worst queries, every class and the most confused pairs."""
        return {**self.summary(), "worst_queries": self.worst_queries(worst), "per_class": self.classes(),
                "confused_pairs": self.confused_pairs(pairs)}


def inspect_run(
    run_dir: str | os.PathLike,
    *,
    split: str = "test",
    checkpoint: str | os.PathLike = "best",
    k: int = 10,
    device: str | None = "auto",
    progress: Progress | None = None,
) -> Inspection:
    """Embed *split* with *checkpoint* (cached) and compute the per-query results; raises EmbedError or ValueError.

    The search runs where the run's evaluation ran (``eval.on_gpu``), so the figures are the logged ones.
    """
    import torch

    ckpt = resolve_checkpoint(run_dir, checkpoint)
    embeddings = embed(ckpt, split, device=device, progress=progress)
    n = len(embeddings)
    if not 1 <= k <= n - 1:
        raise ValueError(f"-k {k}: the {split} split has {n} images, so k must be in 1..{n - 1}")
    search_device = "cuda" if ckpt.config.eval.on_gpu and torch.cuda.is_available() else "cpu"
    results = query_results(embeddings.vectors, embeddings.labels, k=k, device=search_device)
    return Inspection(Path(run_dir), embeddings, results)


def embed_in_child(run_dir: str | os.PathLike, *, split: str = "test", checkpoint: str | os.PathLike = "best",
                   progress: Progress | None = None, started=None) -> bool:
    """Make sure the split's embeddings are cached, embedding them in a child process (``python -m engine.embed``)
    when they are not: the TUI's interpreter stays free for the screen. True when it had to embed.

    *started* gets the child's Popen (to stop it); raises EmbedError with the child's error line.
    """
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    if ckpt.run_dir is not None and read_cache(cache_path(ckpt.run_dir, split, ckpt.name), ckpt.path) is not None:
        return False
    command = [sys.executable, "-m", "engine.embed", str(run_dir), "--split", split, "--checkpoint", str(checkpoint)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        if started is not None:
            started(child)
        for line in child.stdout:
            word, *numbers = line.split()
            if word == "progress" and progress is not None:
                progress(int(numbers[0]), int(numbers[1]))
        errors = child.stderr.read().strip().splitlines()
    if child.returncode != 0:
        lines = [line for line in errors if line.startswith("error: ")] or errors[-1:] or [f"exit code {child.returncode}"]
        raise EmbedError(lines[-1].removeprefix("error: "))
    return True


# --------------------------------------------------------------------------------- figures

FRAME = {"query": "#1f4e9c", True: "#1a9641", False: "#d7191c"}  # blue query, green correct, red wrong


def _thumbnail(path: str, size: int = 96) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        return np.asarray(image)


def _wrapped(name: str, width: int = 16, lines: int = 2) -> str:
    """A class name on at most *lines* lines of *width* characters, broken between words ('_' reads as a space)."""
    import textwrap

    parts = textwrap.wrap(name.replace("_", " "), width) or [""]
    if len(parts) > lines:
        parts = [*parts[: lines - 1], parts[lines - 1][: width - 1] + "…"]
    return "\n".join(parts)


def _save_figure(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


def draw_row(axes, cells) -> None:
    """One row of a retrieval grid: each (image path, frame colour, title) in its axis, framed and titled."""
    for axis, (image, colour, title) in zip(axes, cells, strict=True):
        axis.imshow(_thumbnail(image))
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)
        axis.set_title(title, fontsize=7, color=colour)


def write_png(inspection: Inspection, path: str | os.PathLike, *, worst: int = 8) -> Path:
    """A grid for papers: one row per worst query (the query, then its k neighbours framed green if they share its
    class, red if not), each image titled with its class (and distance); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    queries = inspection.worst_queries(worst)
    columns = 1 + inspection.results.k
    figure, axes = plt.subplots(len(queries), columns, figsize=(1.3 * columns, 1.7 * len(queries)), squeeze=False)
    try:
        for row, query in zip(axes, queries, strict=True):
            ap = "-" if query["ap"] is None else f"{query['ap']:.2f}"
            cells = [(query["path"], FRAME["query"], f"{_wrapped(query['class'])}\nquery, AP {ap}")]
            cells += [(n["path"], FRAME[n["correct"]], f"{_wrapped(n['class'])}\n{n['distance']:.3f}")
                      for n in query["neighbours"]]
            draw_row(row, cells)
        figure.suptitle(f"{inspection.split} split, {inspection.embeddings.checkpoint.get('name')} checkpoint: "
                        f"the {len(queries)} worst queries (first column) and their {inspection.results.k} nearest "
                        "neighbours (green: same class, red: another)", fontsize=8)
        figure.tight_layout()
        _save_figure(figure, Path(path))
    finally:
        plt.close(figure)
    return Path(path)


def project(vectors: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """2-D coordinates of *vectors*: UMAP (umap-learn) or t-SNE (scikit-learn)."""
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(vectors)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, random_state=seed, init="pca",
                    perplexity=min(30.0, max(2.0, (len(vectors) - 1) / 3))).fit_transform(vectors)
    raise ValueError(f"unknown projection {method!r}; allowed: {', '.join(PROJECTIONS)}")


def write_projection(inspection: Inspection, path: str | os.PathLike, *, method: str = "umap") -> Path:
    """A 2-D map of the split's embeddings coloured by class (20 colours, cycled), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    points = project(inspection.embeddings.vectors, method)
    classes = inspection.results.class_index
    figure, axis = plt.subplots(figsize=(7, 7))
    try:
        axis.scatter(points[:, 0], points[:, 1], c=classes % 20, cmap="tab20", s=6, vmin=0, vmax=19)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(f"{method.upper() if method == 'umap' else 't-SNE'} of the {inspection.split} split "
                       f"({len(points)} images, {len(inspection.results.classes)} classes, coloured by class)",
                       fontsize=9)
        figure.tight_layout()
        _save_figure(figure, Path(path))
    finally:
        plt.close(figure)
    return Path(path)
