"""How the compare screen's Differences tab reads: plain functions over :class:`dmltui.retrieval_diff.RetrievalDiff`
(what two runs on the same dataset retrieve differently, as ``dmltui inspect A --against B``).

The widget (dmltui/tui/widgets/compare_tabs.py) only places what these return.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text

from dmltui.tui.retrieval_view import QueryRow, marks_text, number

SPLIT, CHECKPOINT = "test", "best"  # what the tab compares: `dmltui inspect --against`'s defaults
QUERIES_SHOWN = 200  # of each side
SIDES = ("A", "B")


def differences_refusal(records: Sequence[dict[str, Any]]) -> str | None:
    """Why the compared runs get no Differences tab (it compares exactly two runs on one dataset); None when they
    get one."""
    if len(records) != 2:
        return f"the Differences tab compares two runs, not {len(records)}"
    a, b = (r.get("dataset") for r in records)
    if a != b:
        return f"the Differences tab compares runs on the same dataset, not {a} and {b}"
    return None


def side_names(records: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """A and B: the runs' names, with their ids where the names are the same."""
    names = [r.get("name") or r["id"] for r in records]
    if names[0] == names[1]:
        names = [f"{name} {r['id']}" for name, r in zip(names, records, strict=True)]
    return names[0], names[1]


def counts_text(diff, names: tuple[str, str], view: str) -> Text:
    """``A margin-s0 R@1 0.8100 · B triplet-s0 R@1 0.7700 · A right, B wrong 52 · B right, A wrong 17 · ...``."""
    counts = diff.counts()
    text = Text()
    for side, found, name in zip(SIDES, (diff.a, diff.b), names, strict=True):
        text.append(f"{side} ", style="bold")
        text.append(f"{name} R@1 {found.results.recall_at_1:.4f} · ")
    text.append(f"A right, B wrong {counts['only_a']}", style="bold")
    text.append(" · ")
    text.append(f"B right, A wrong {counts['only_b']}", style="bold")
    text.append(f" · both right {counts['both_right']}, both wrong {counts['both_wrong']} of {counts['queries']}")
    text.append(" · v: " + ("per class" if view == "queries" else "queries"), style="dim")
    return text


def query_rows(diff, count: int = QUERIES_SHOWN) -> list[QueryRow]:
    """The queries one run gets right at rank 1 and the other wrong, A's first, each side's classes that differ most
    first (``RetrievalDiff.report``'s order): row, class, which run is right, both runs' ✓/✗ marks."""
    order = {row["class"]: i for i, row in enumerate(diff.per_class())}
    rows = []
    for side, queries in zip(SIDES, (diff.only_a(), diff.only_b()), strict=True):
        ranked = sorted(queries.tolist(), key=lambda q: (order[diff.a.class_of(q)], q))[:count]
        for q in ranked:
            rows.append(QueryRow(str(q), [
                Text(str(q), justify="right"), diff.a.class_of(q), Text(side, style="bold"),
                marks_text(diff.a.results.correct[q].tolist()), marks_text(diff.b.results.correct[q].tolist()),
            ]))
    return rows


def class_rows(diff) -> list[list[Any]]:
    """Every class, the largest |A − B| recall@1 first: A − B, A, B, size, class."""
    return [[Text(f"{row['difference']:+.3f}", justify="right",
                  style="green" if row["difference"] > 0 else "red" if row["difference"] < 0 else ""),
             Text(number(row["a_recall_at_1"]), justify="right"), Text(number(row["b_recall_at_1"]), justify="right"),
             Text(str(row["size"]), justify="right"), row["class"]]
            for row in diff.per_class()]


def side_text(query: dict[str, Any], side: str, name: str) -> Text:
    """The line above a run's neighbours of the chosen query: ``A margin-s0: AP 0.52, first hit 1``."""
    shown = query[side.lower()]
    text = Text(f"{side} ", style="bold")
    text.append(f"{name}: AP {number(shown['ap'], 2)}, first hit {shown['first_hit'] or '-'}")
    return text
