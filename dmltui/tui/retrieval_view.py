"""How the run screen's Retrieval tab reads: plain functions over :class:`dmltui.inspect.Inspection`.

The widget (dmltui/tui/widgets/retrieval.py) only places what these return.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from dmltui.inspect import QUERY_ORDERS

WORST_SHOWN = 200  # rows of the worst-queries table: the lowest AP first, then ordered as chosen
PAIRS_SHOWN = 50
ORDER_LABELS = {"ap": "AP", "rank": "first-hit rank", "class": "class"}
MARKS = {True: ("✓", "green"), False: ("✗", "red")}
IMAGE_MODES = ("auto", "halfcell")


def image_mode() -> str:
    """``$DMLTUI_IMAGES``: auto (kitty graphics or sixel where the terminal has them, else half-cell blocks) or
    halfcell (always half-cell blocks; tests use it for pictures that do not depend on the terminal)."""
    mode = os.environ.get("DMLTUI_IMAGES", "auto")
    return mode if mode in IMAGE_MODES else "auto"


def next_order(order: str) -> str:
    return QUERY_ORDERS[(QUERY_ORDERS.index(order) + 1) % len(QUERY_ORDERS)]


def marks_text(correct: list[bool]) -> Text:
    """✓/✗ per neighbour, nearest first, in green/red."""
    text = Text()
    for hit in correct:
        mark, colour = MARKS[bool(hit)]
        text.append(mark, style=colour)
    return text


def number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@dataclass
class QueryRow:
    key: str  # the query's row in the split, as text
    cells: list[Any]


def query_rows(inspection, order: str = "ap", count: int = WORST_SHOWN) -> list[QueryRow]:
    """The *count* worst queries (lowest AP), ordered by *order* (ap, rank or class): row, class, AP, first hit, marks."""
    rows = []
    for query in inspection.worst_queries(count, order):
        rows.append(QueryRow(str(query["row"]), [
            Text(str(query["row"]), justify="right"), query["class"], Text(number(query["ap"], 2), justify="right"),
            Text(str(query["first_hit"] or "-"), justify="right"),
            marks_text([n["correct"] for n in query["neighbours"]]),
        ]))
    return rows


def class_rows(inspection) -> list[list[Any]]:
    """Every class, the lowest recall@1 first: R@1, size, class."""
    return [[Text(number(row["recall_at_1"]), justify="right"), Text(str(row["size"]), justify="right"), row["class"]]
            for row in inspection.classes()]


def pair_rows(inspection, count: int = PAIRS_SHOWN) -> list[list[Any]]:
    """The most confused class pairs: count, "a ↔ b"."""
    return [[Text(str(pair["count"]), justify="right"), f"{pair['classes'][0]} ↔ {pair['classes'][1]}"]
            for pair in inspection.confused_pairs(count)]


def summary_text(inspection, order: str, view: str) -> Text:
    summary = inspection.summary()
    checkpoint = summary["checkpoint"]
    text = Text()
    text.append(f"{summary['split']} · {checkpoint['name']} (epoch {checkpoint['epoch']}) · ")
    text.append(f"R@1 {summary['recall_at_1']:.4f}", style="bold")
    text.append(f" · MAP@R {number(summary['map_at_r'], 4)} · {summary['images']} images, {summary['classes']} classes")
    if view == "queries":
        text.append(f" · worst by {ORDER_LABELS[order]}", style="dim")
    return text


def progress_text(done: int, total: int, split: str, checkpoint: str) -> str:
    return f"embedding the {split} split with the {checkpoint} checkpoint: {done}/{total} images"


def caption(neighbour: dict[str, Any] | None, query: dict[str, Any], width: int) -> Text:
    """Two lines under an image: the mark and distance (for the query: Q and its AP), then the class, cut to *width*."""
    if neighbour is None:
        first = Text(f"Q AP {number(query['ap'], 2)}", style="bold")
        name = query["class"]
    else:
        mark, colour = MARKS[neighbour["correct"]]
        first = Text(f"{mark} {neighbour['distance']:.3f}", style=f"bold {colour}")
        name = neighbour["class"]
    first.append("\n")
    first.append(name if len(name) <= width else name[: width - 1] + "…", style="dim")
    return first
