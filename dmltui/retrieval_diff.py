"""What two runs retrieve differently, in DML terms (``dmltui inspect A --against B``, the compare screen): the queries
one run gets right at rank 1 and the other wrong, recall@1 per class side by side with the largest differences first,
and a chosen query's neighbours in both runs.

Both inspections must be of the same images in the same order (the same dataset and split: their embeddings' paths
and labels are compared), so that row q is the same query in both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmltui.inspect import FRAME, Inspection, _save_figure, _wrapped, draw_row


class DifferentImages(ValueError):
    """The two runs were inspected on different images; the message says how they differ."""


@dataclass
class RetrievalDiff:
    a: Inspection
    b: Inspection

    def __post_init__(self) -> None:
        ea, eb = self.a.embeddings, self.b.embeddings
        if len(ea) != len(eb):
            raise DifferentImages(f"the runs' {self.a.split} splits differ: {len(ea)} images against {len(eb)}; "
                                  "compare runs of the same dataset")
        if list(ea.paths) != list(eb.paths) or not np.array_equal(ea.labels, eb.labels):
            different = next(i for i, (p, q) in enumerate(zip(ea.paths, eb.paths, strict=True)) if p != q) \
                if list(ea.paths) != list(eb.paths) else None
            where = f" (first at image {different}: {ea.paths[different]} against {eb.paths[different]})" \
                if different is not None else " (their labels differ)"
            raise DifferentImages(f"the runs' {self.a.split} splits are not the same images{where}; compare runs of "
                                  "the same dataset and split")

    @property
    def right_a(self) -> np.ndarray:
        return self.a.results.correct[:, 0]

    @property
    def right_b(self) -> np.ndarray:
        return self.b.results.correct[:, 0]

    def only_a(self) -> np.ndarray:
        """Rows A gets right at rank 1 and B wrong, in row order."""
        return np.flatnonzero(self.right_a & ~self.right_b)

    def only_b(self) -> np.ndarray:
        return np.flatnonzero(self.right_b & ~self.right_a)

    def counts(self) -> dict[str, int]:
        a, b = self.right_a, self.right_b
        return {"queries": int(a.size), "both_right": int((a & b).sum()), "only_a": int((a & ~b).sum()),
                "only_b": int((b & ~a).sum()), "both_wrong": int((~a & ~b).sum())}

    def per_class(self) -> list[dict[str, Any]]:
        """Every class: its size and both runs' recall@1, the largest |A − B| first (then the larger class, then by
        name)."""
        sizes, recall_a = self.a.results.per_class()
        _, recall_b = self.b.results.per_class()
        rows = [{"class": self.a.class_name(i), "size": int(sizes[i]), "a_recall_at_1": float(recall_a[i]),
                 "b_recall_at_1": float(recall_b[i]), "difference": float(recall_a[i] - recall_b[i])}
                for i in range(len(sizes))]
        return sorted(rows, key=lambda c: (-abs(c["difference"]), -c["size"], c["class"]))

    def query(self, row: int) -> dict[str, Any]:
        """One query with its neighbours in both runs."""
        if not 0 <= row < len(self.a.embeddings):
            raise ValueError(f"--query {row}: the {self.a.split} split has rows 0..{len(self.a.embeddings) - 1}")
        mine, theirs = self.a.query(row), self.b.query(row)
        return {"row": row, "path": mine["path"], "class": mine["class"],
                "a": {key: mine[key] for key in ("ap", "first_hit", "neighbours")},
                "b": {key: theirs[key] for key in ("ap", "first_hit", "neighbours")}}

    def report(self, examples: int = 10, classes: int = 20) -> dict[str, Any]:
        """``inspect A --against B --json``: both summaries, the counts, the first *examples* queries of each side
        (those whose class differs most first) and the *classes* classes that differ most."""
        per_class = self.per_class()
        order = {row["class"]: i for i, row in enumerate(per_class)}

        def examples_of(rows: np.ndarray) -> list[dict[str, Any]]:
            ranked = sorted(rows.tolist(), key=lambda q: (order[self.a.class_of(q)], q))
            return [self.query(int(q)) for q in ranked[:examples]]

        return {"a": self.a.summary(), "b": self.b.summary(), **self.counts(),
                "recall_at_1_difference": self.a.results.recall_at_1 - self.b.results.recall_at_1,
                "only_a_queries": examples_of(self.only_a()), "only_b_queries": examples_of(self.only_b()),
                "per_class": per_class[:classes]}


def write_query_png(diff: RetrievalDiff, row: int, path: str | os.PathLike, *, names: tuple[str, str] = ("A", "B")) -> Path:
    """One query and its k neighbours in each run, a row per run (green frame: same class, red: another); written
    atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    query = diff.query(row)
    columns = 1 + diff.a.results.k
    figure, axes = plt.subplots(2, columns, figsize=(1.3 * columns, 3.6), squeeze=False)
    try:
        for axis_row, side, name in zip(axes, ("a", "b"), names, strict=True):
            ap = "-" if query[side]["ap"] is None else f"{query[side]['ap']:.2f}"
            cells = [(query["path"], FRAME["query"], f"{_wrapped(query['class'])}\n{name}: AP {ap}")]
            cells += [(n["path"], FRAME[n["correct"]], f"{_wrapped(n['class'])}\n{n['distance']:.3f}")
                      for n in query[side]["neighbours"]]
            draw_row(axis_row, cells)
        figure.suptitle(f"query {row} of the {diff.a.split} split: its {diff.a.results.k} nearest neighbours in "
                        f"{names[0]} (top) and {names[1]} (bottom)", fontsize=8)
        figure.tight_layout()
        _save_figure(figure, Path(path))
    finally:
        plt.close(figure)
    return Path(path)
