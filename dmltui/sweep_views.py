"""The views that turn a sweep into an answer: parallel coordinates over the varied config keys with the metric last,
and a metric against one parameter, mean ± std over seeds (the paper's figures). One computation each, shown as a
PNG (matplotlib), as text (plotext, where the terminal shows no images) and as JSON.

Axes: a numeric key is linear, or logarithmic when its values are positive and span two decades or more (learning
rates); any other key (names, booleans, lists) is categorical, its values evenly spaced in sorted order. Every axis
maps the runs' values to 0..1, so one line per run crosses all of them. A run without the metric is left out and
counted. Bookkeeping keys (``log.*``: names, ids, projects) and the seed are no axes: they vary by construction.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmltui.compare import differing_keys, flatten_config
from dmltui.runs import load_config
from dmltui.selection import choose_selection, run_selection

NOT_AXES = ("log.", "run.seed")


class NothingToPlot(ValueError):
    """Too few runs, no varied key, or no run with the metric; the message says which."""


@dataclass(frozen=True)
class Axis:
    key: str
    scale: str  # "linear", "log" or "category"
    values: list[Any]  # each run's raw value
    positions: list[float]  # each run's value on the axis, 0..1
    ticks: list[tuple[float, str]]  # (position, label)


@dataclass(frozen=True)
class Parallel:
    runs: list[dict[str, Any]]  # id, name of each plotted run
    axes: list[Axis]  # the varied keys, then the metric
    metric: str
    split: str
    selection: str
    left_out: int  # runs without the metric

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "split": self.split, "selection": self.selection, "left_out": self.left_out,
                "runs": self.runs,
                "axes": [{"key": a.key, "scale": a.scale, "values": a.values, "positions": a.positions,
                          "ticks": [list(t) for t in a.ticks]} for a in self.axes]}

    def within(self, key: str, low: float, high: float) -> list[int]:
        """Indices of the runs whose value on axis *key* lies in [low, high] (raw values for numeric axes, positions
        0..1 for categorical ones): selecting a range on an axis to filter."""
        axis = next((a for a in self.axes if a.key == key), None)
        if axis is None:
            raise NothingToPlot(f"no axis {key!r}; the axes are {', '.join(a.key for a in self.axes)}")
        marks = axis.positions if axis.scale == "category" else axis.values
        return [i for i, value in enumerate(marks) if low <= value <= high]


def _label(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def make_axis(key: str, values: list[Any]) -> Axis:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        low, high = min(values), max(values)
        scale = "log" if low > 0 and high / low >= 100 else "linear"
        transform = math.log10 if scale == "log" else float
        lo, hi = transform(low), transform(high)
        span = (hi - lo) or 1.0
        positions = [(transform(v) - lo) / span if hi > lo else 0.5 for v in values]
        distinct = sorted(set(values))
        shown = distinct if len(distinct) <= 6 else [low, high]
        ticks = [((transform(v) - lo) / span if hi > lo else 0.5, _label(v)) for v in shown]
        return Axis(key, scale, list(values), positions, ticks)
    labels = sorted({_label(v) for v in values})
    place = {label: (i / (len(labels) - 1) if len(labels) > 1 else 0.5) for i, label in enumerate(labels)}
    return Axis(key, "category", list(values), [place[_label(v)] for v in values], [(place[lb], lb) for lb in labels])


def parallel(records: Sequence[dict[str, Any]], metric: str = "e_recall@1", split: str = "test",
             selection: str | None = None) -> Parallel:
    """Parallel coordinates of *records*: one axis per config key that varies among them, the selected *metric*
    last. Raises NothingToPlot, and the selection's errors (an unknown one, val without validation splits)."""
    if len(records) < 2:
        raise NothingToPlot(f"parallel coordinates need 2 runs or more, got {len(records)}")
    selection, _ = choose_selection(records, selection)
    scored = []
    for record in records:
        value = (run_selection(record, selection, split).metrics.get(metric) or {}).get("value")
        if isinstance(value, (int, float)) and math.isfinite(value):
            scored.append((record, float(value)))
    if len(scored) < 2:
        raise NothingToPlot(f"{len(scored)} of {len(records)} runs logged {split}/{metric}; 2 or more are needed")
    kept = [record for record, _ in scored]
    keys = [k for k in differing_keys(kept) if not k.startswith(NOT_AXES)]
    if not keys:
        raise NothingToPlot(f"the {len(kept)} runs differ in no config key but their seed: nothing to put on axes")
    flats = [flatten_config(load_config(record)) for record in kept]
    axes = [make_axis(key, [flat.get(key) for flat in flats]) for key in keys]
    axes.append(make_axis(f"{split}/{metric}", [value for _, value in scored]))
    runs = [{"id": record.get("id"), "name": record.get("name")} for record in kept]
    return Parallel(runs, axes, metric, split, selection, len(records) - len(kept))


def write_parallel_png(data: Parallel, path: str | os.PathLike) -> Path:
    """The chart as a PNG, lines coloured by the metric (viridis: yellow is best), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from dmltui.inspect import _save_figure

    metric_axis = data.axes[-1]
    low, high = min(metric_axis.values), max(metric_axis.values)
    colours = plt.get_cmap("viridis")
    figure, axis = plt.subplots(figsize=(max(6.0, 1.8 * len(data.axes)), 4.5))
    try:
        xs = list(range(len(data.axes)))
        for i in sorted(range(len(data.runs)), key=lambda i: metric_axis.values[i]):  # the best drawn last, on top
            shade = (metric_axis.values[i] - low) / ((high - low) or 1.0)
            axis.plot(xs, [a.positions[i] for a in data.axes], color=colours(shade), alpha=0.8, linewidth=1.4)
        for x, a in zip(xs, data.axes, strict=True):
            axis.axvline(x, color="#555555", linewidth=0.8)
            for position, label in a.ticks:
                axis.text(x + 0.03, position, label, fontsize=7, va="center")
        axis.set_xticks(xs, [f"{a.key}{' (log)' if a.scale == 'log' else ''}" for a in data.axes], fontsize=8,
                        rotation=15)
        axis.set_yticks([])
        axis.set_ylim(-0.05, 1.05)
        axis.set_title(f"{len(data.runs)} runs, {data.split}/{data.metric} selected by {data.selection}"
                       + (f" ({data.left_out} without it left out)" if data.left_out else ""), fontsize=9)
        figure.tight_layout()
        _save_figure(figure, Path(path))
    finally:
        plt.close(figure)
    return Path(path)


def parallel_text(data: Parallel, width: int = 80, height: int = 20) -> str:
    """The chart drawn with plotext, for terminals without images: a line per run, the best in the brightest colour
    band; axis names below."""
    import plotext

    metric_axis = data.axes[-1]
    low, high = min(metric_axis.values), max(metric_axis.values)
    bands = ["red", "orange", "yellow", "green"]
    plotext.clear_figure()
    plotext.plotsize(width, height)
    plotext.theme("clear")
    xs = list(range(1, len(data.axes) + 1))
    for i in range(len(data.runs)):
        shade = (metric_axis.values[i] - low) / ((high - low) or 1.0)
        plotext.plot(xs, [a.positions[i] for a in data.axes], color=bands[min(3, int(shade * 4))], marker="braille")
    plotext.xticks(xs, [a.key.rsplit(".", 1)[-1] for a in data.axes])
    plotext.yticks([])
    plotext.title(f"{data.split}/{data.metric} ({data.selection}): {_label(low)} red .. {_label(high)} green")
    return plotext.build()


@dataclass(frozen=True)
class ScatterPoint:
    value: Any
    mean: float
    std: float | None  # None for a single run
    n: int
    runs: list[str]


def scatter(records: Sequence[dict[str, Any]], key: str, metric: str = "e_recall@1", split: str = "test",
            selection: str | None = None) -> tuple[list[ScatterPoint], str, list[str]]:
    """The metric against config *key*: one point per value of the key, the mean ± std (sample, n − 1) over the runs
    with that value (the seeds); with the selection used and the other keys that vary too (each point then mixes
    them, which the caller should say)."""
    selection, _ = choose_selection(records, selection)
    groups: dict[str, list[tuple[Any, float, str]]] = {}
    for record in records:
        flat = flatten_config(load_config(record))
        if key not in flat:
            continue
        value = (run_selection(record, selection, split).metrics.get(metric) or {}).get("value")
        if isinstance(value, (int, float)) and math.isfinite(value):
            groups.setdefault(_label(flat[key]), []).append((flat[key], float(value), str(record.get("id"))))
    if not groups:
        raise NothingToPlot(f"no run has both config key {key!r} and {split}/{metric}")
    points = []
    for members in groups.values():
        scores = [score for _, score, _ in members]
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) if len(scores) > 1 else None
        points.append(ScatterPoint(members[0][0], mean, std, len(scores), [run for _, _, run in members]))
    numeric = all(isinstance(p.value, (int, float)) and not isinstance(p.value, bool) for p in points)
    points.sort(key=lambda p: p.value if numeric else _label(p.value))
    others = [k for k in differing_keys(records) if k != key and not k.startswith(NOT_AXES)]
    return points, selection, others
