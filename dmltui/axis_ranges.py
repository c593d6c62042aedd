"""Ranges on the axes of a parallel-coordinates chart (``dmltui plot parallel --range KEY=LOW:HIGH``, the compare
screen's range filter): written as text, read against the axis, and the lines that lie within every range.

On a numeric axis LOW and HIGH are values (``optim.lr=1e-5:1e-4``); either may be left out for no bound
(``test/e_recall@1=0.6:``), and a single value is a range of one (``optim.epochs=40``). On a categorical axis they
are the axis's values, a range in its sorted order (``loss.name=margin:triplet``), or one value (``loss.name=margin``,
which may itself hold a colon: ``model.arch=timm:vit_s16.dino``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dmltui.sweep_views import Axis, Parallel


class BadRange(ValueError):
    """A range that does not read on its axis; the message says why (and what the axis holds), not the range."""


@dataclass(frozen=True)
class AxisRange:
    key: str
    low: float  # a value on a numeric axis, a position 0..1 on a categorical one: what Parallel.within takes
    high: float
    bounds: str  # as written, "LOW:HIGH"

    def __str__(self) -> str:
        return f"{self.key}={self.bounds}"


def split_option(text: str) -> tuple[str, str]:
    """``KEY=LOW:HIGH`` -> (KEY, "LOW:HIGH"); BadRange without a key and an ``=``."""
    key, equals, bounds = text.partition("=")
    if not equals or not key.strip():
        raise BadRange("not KEY=LOW:HIGH (e.g. optim.lr=1e-5:1e-4)")
    return key.strip(), bounds.strip()


def axis_of(data: Parallel, key: str) -> Axis:
    axis = next((a for a in data.axes if a.key == key), None)
    if axis is None:
        raise BadRange(f"no axis {key!r}; the axes are {', '.join(a.key for a in data.axes)}")
    return axis


def span_text(axis: Axis) -> str:
    """What an axis holds, for a message or a prompt: ``1e-05..0.001 (log)`` or ``margin, triplet``."""
    if axis.scale == "category":
        return ", ".join(label for _, label in axis.ticks)
    low, high = min(axis.values), max(axis.values)
    return f"{low:.4g}..{high:.4g}" + (" (log)" if axis.scale == "log" else "")


def axis_range(data: Parallel, key: str, bounds: str) -> AxisRange:
    """The range *bounds* (``LOW:HIGH``) on axis *key* of *data*; BadRange naming what the axis holds."""
    axis = axis_of(data, key)
    if axis.scale == "category":
        low, high = _category_bounds(axis, bounds)
    else:
        low, high = _number_bounds(axis, bounds)
    return AxisRange(key, low, high, bounds)


def _number_bounds(axis: Axis, bounds: str) -> tuple[float, float]:
    low_text, colon, high_text = bounds.partition(":")
    if not colon:
        high_text = low_text
    try:
        low = float(low_text) if low_text.strip() else -math.inf
        high = float(high_text) if high_text.strip() else math.inf
    except ValueError:
        raise BadRange(f"LOW:HIGH must be numbers on axis {axis.key} ({span_text(axis)})") from None
    if math.isnan(low) or math.isnan(high) or low > high:
        raise BadRange("LOW must not be above HIGH")
    return low, high


def _category_bounds(axis: Axis, bounds: str) -> tuple[float, float]:
    places = {label: position for position, label in axis.ticks}
    if bounds in places:
        return places[bounds], places[bounds]
    for at in (i for i, char in enumerate(bounds) if char == ":"):
        low_text, high_text = bounds[:at], bounds[at + 1:]
        if all(part == "" or part in places for part in (low_text, high_text)):
            low = places[low_text] if low_text else 0.0
            high = places[high_text] if high_text else 1.0
            if low > high:
                raise BadRange(f"{low_text!r} comes after {high_text!r} on axis {axis.key} ({span_text(axis)})")
            return low, high
    raise BadRange(f"neither a value of axis {axis.key} nor LOW:HIGH of its values ({span_text(axis)})")


def within_all(data: Parallel, ranges: list[AxisRange]) -> list[int]:
    """Indices of the runs that lie within every range, in the chart's order."""
    rows = set(range(len(data.runs)))
    for chosen in ranges:
        rows &= set(data.within(chosen.key, chosen.low, chosen.high))
    return sorted(rows)


def narrowed(data: Parallel, rows: list[int]) -> Parallel:
    """*data* with only the lines of *rows*; the axes keep their scales and ticks, so a line stays where it was."""
    axes = [replace(a, values=[a.values[i] for i in rows], positions=[a.positions[i] for i in rows])
            for a in data.axes]
    return replace(data, runs=[data.runs[i] for i in rows], axes=axes)
