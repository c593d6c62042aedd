"""What the compare screen shows, as plain functions over store records and metrics.jsonl rows (no Textual).

The numbers come from ``dmltui compare``'s functions (``dmltui.compare``): the differing config keys,
the best value (and epoch) of each metric under the screen's selection (``dmltui.selection``: val,
last or test-max), mean ± std by group, and the CSV, Markdown and LaTeX exports. The screen shows the runs table transposed (a column per run),
which fits a few runs in 80 columns; the exports have the CLI's shape (a row per run). The Parallel tab draws
``dmltui plot parallel``'s chart (``dmltui.sweep_views``), narrowed by ranges on its axes (``dmltui.axis_ranges``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmltui import compare as cmp
from dmltui.axis_ranges import AxisRange, BadRange, axis_range, narrowed, span_text, within_all
from dmltui.monitor import metrics_tail
from dmltui.selection import SHORT_LABELS, NoValidationSplit, UnknownSelection
from dmltui.sweep_views import NothingToPlot, Parallel, parallel, write_parallel_png
from dmltui.tui.retrieval_view import image_mode
from dmltui.tui.run_view import LOSS_KEY, column_label, fold_records, last_metrics, series
from engine.metric_names import display_name

EXPORT_FORMATS = {"csv": "csv", "markdown": "md", "latex": "tex"}  # format -> file extension
DEFAULT_EXPORT_STEM = "dmltui-compare"


def compare_split(records: Sequence[dict[str, Any]]) -> str:
    """``test`` (the paper's protocol) when any run logged it, else ``val``, else the first split with metrics."""
    splits = cmp.logged_splits(records)
    for split in ("test", "val"):
        if split in splits:
            return split
    return splits[0] if splits else "test"


def run_labels(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Column headers: the run names, with the id where two runs share a name."""
    names = [r.get("name") or r["id"] for r in records]
    return {r["id"]: (name if names.count(name) == 1 else f"{name} {r['id']}") for r, name in zip(records, names)}


def number_text(metric: str, value: float | None) -> str:
    """As the CLI's tables: fractions x100 with 2 decimals, the rest with 4."""
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if cmp.is_fraction(metric) else f"{value:.4f}"


def entry_text(metric: str, entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    text = number_text(metric, entry["value"])
    return f"{text} ({entry['epoch']})" if entry.get("epoch") is not None else text


@dataclass
class TransposedRow:
    label: str
    cells: list[str]  # one per run
    bold: set[int]  # indexes of the runs whose cell is the best of the row


def runs_table(records: Sequence[dict[str, Any]], metrics: Sequence[str], split: str,
               lasts: dict[str, dict[str, dict | None]], selection: str | None = None) -> list[TransposedRow]:
    """A row per differing config key, then the best (``comparison`` under *selection*) and the last value of every
    metric, a column per run.

    *lasts* maps run id -> ``last_metrics`` of its metrics.jsonl rows."""
    rows = cmp.comparison(records, metrics, split, selection)
    table = cmp.to_table_rows(rows, metrics, labels={m: f"best {display_name(m)}" for m in metrics})
    column = {header: c for c, header in enumerate(table.headers)}
    out = [TransposedRow("state", [r["state"] or "-" for r in rows], set()),
           TransposedRow("epoch", [f"{rec.get('epoch') or 0}/{rec.get('epochs') or '?'}" for rec in records], set())]
    keys = list(rows[0]["config"]) if rows else []
    out += [TransposedRow(key, [line[column[key]] for line in table.rows], set()) for key in keys]
    last_rows = [{"dataset": r.get("dataset"), "metrics": {m: (lasts.get(r["id"]) or {}).get(m) for m in metrics}}
                 for r in rows]
    last_best = cmp.best_cells(last_rows, metrics)
    for metric in metrics:
        c = column[f"best {display_name(metric)} (epoch)"]
        out.append(TransposedRow(table.headers[c], [line[c] for line in table.rows],
                                 {r for r in range(len(rows)) if (r, c) in table.bold}))
        out.append(TransposedRow(f"last {display_name(metric)} (epoch)",
                                 [entry_text(metric, row["metrics"][metric]) for row in last_rows],
                                 {r for r, m in last_best if m == metric}))
    return out


def group_choices(records: Sequence[dict[str, Any]]) -> list[str]:
    """What the groups tab can group by: preset, name (without the seed suffix) and the differing config keys."""
    return [*cmp.GROUP_BUILTINS, *(k for k in cmp.differing_keys(records) if k not in cmp.GROUP_BUILTINS)]


def group_rows(records: Sequence[dict[str, Any]], group_by: str, metrics: Sequence[str], split: str,
               selection: str | None = None) -> list[dict[str, Any]]:
    """``group_summary`` over every run shown, finished or not (the screen says how many are unfinished)."""
    if not records:
        return []
    return cmp.group_summary(records, group_by, list(metrics), split, include_unfinished=True, selection=selection)


def curve_choices(metrics: Sequence[str], split: str) -> list[str]:
    """Row keys the curves tab cycles through: the compared metrics on the split, then the train loss."""
    return [*(f"{split}/{m}" for m in metrics), LOSS_KEY]


def run_curves(rows_by_run: dict[str, list[dict[str, Any]]], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """``{run id: (epochs, values)}`` of one row key, for the runs that logged it."""
    curves = {}
    for run_id, rows in rows_by_run.items():
        xs, ys = series(rows, key)
        if xs:
            curves[run_id] = (xs, ys)
    return curves


def curve_title(key: str) -> str:
    return column_label(key)


# --------------------------------------------------------------------------- export


def default_export_path(fmt: str) -> str:
    return f"./{DEFAULT_EXPORT_STEM}.{EXPORT_FORMATS[fmt]}"


def export_text(rows: Sequence[dict[str, Any]], metrics: Sequence[str], fmt: str) -> str:
    """The file ``dmltui compare ... --format FMT`` would print for the same rows."""
    if fmt == "csv":
        return cmp.to_csv(rows, metrics)
    if fmt == "markdown":
        return cmp.to_markdown(rows, metrics)
    if fmt == "latex":
        return cmp.to_latex(rows, metrics)
    raise ValueError(f"unknown export format {fmt!r}; formats: {', '.join(EXPORT_FORMATS)}")


def write_export(path: str | os.PathLike, text: str) -> Path:
    """Write atomically (temp file, fsync, rename); returns the absolute path. Relative paths are from the current directory."""
    from engine.io import atomic_write_text

    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"no folder {target.parent}")
    atomic_write_text(target, text)
    return target


# --------------------------------------------------------------------------- the incremental reader


class CompareFiles:
    """The metrics.jsonl rows of several runs, read incrementally (``poll()`` is meant for a worker thread)."""

    def __init__(self, records: Sequence[dict[str, Any]]):
        self.tails = {r["id"]: metrics_tail(r["run_dir"]) for r in records}
        self.rows: dict[str, dict[int, dict[str, Any]]] = {r["id"]: {} for r in records}

    def poll(self) -> bool:
        """True when some run's rows changed."""
        changed = False
        for run_id, tail in self.tails.items():
            records, reset = tail.read()
            if reset:
                self.rows[run_id] = {}
                changed = True
            if fold_records(self.rows[run_id], records):
                changed = True
        return changed

    def rows_by_run(self) -> dict[str, list[dict[str, Any]]]:
        """Copies, safe to hand to the UI thread."""
        return {run_id: [dict(rows[e]) for e in sorted(rows)] for run_id, rows in self.rows.items()}

    def lasts(self, metrics: Sequence[str], split: str) -> dict[str, dict[str, dict | None]]:
        return lasts_of(self.rows_by_run(), metrics, split)


def lasts_of(rows_by_run: dict[str, list[dict[str, Any]]], metrics: Sequence[str], split: str) -> dict[str, dict[str, dict | None]]:
    """run id -> ``last_metrics`` of its rows."""
    return {run_id: last_metrics(rows, metrics, split) for run_id, rows in rows_by_run.items()}


# --------------------------------------------------------------------------- the Parallel tab


@dataclass
class ParallelChart:
    """What the Parallel tab draws: the runs' parallel coordinates (``dmltui plot parallel``'s), the ranges set on its
    axes (one per axis at most) and the lines within all of them."""

    data: Parallel
    ranges: dict[str, AxisRange]

    def within(self) -> list[int]:
        return within_all(self.data, list(self.ranges.values()))

    def shown(self) -> Parallel:
        return narrowed(self.data, self.within())

    def status(self) -> str:
        """``3 of 5 runs within optim.lr=1e-5:1e-4 · test/e_recall@1, best: val · r: a range on an axis``."""
        parts = [f"{len(self.within())} of {len(self.data.runs)} runs within {' and '.join(map(str, self.ranges.values()))}"
                 if self.ranges else f"{len(self.data.runs)} runs"]
        parts.append(f"{self.data.split}/{display_name(self.data.metric)} (m), {SHORT_LABELS[self.data.selection]} (s)")
        if self.data.left_out:
            parts.append(f"{self.data.left_out} without it left out")
        parts.append("r: range on an axis")
        return " · ".join(parts)

    def with_range(self, key: str, bounds: str) -> ParallelChart:
        """The chart with *bounds* (``LOW:HIGH``) on axis *key*, or without a range there for empty bounds; BadRange
        when they do not read on the axis."""
        ranges = {k: r for k, r in self.ranges.items() if k != key}
        if bounds.strip():
            ranges[key] = axis_range(self.data, key, bounds.strip())
        return ParallelChart(self.data, ranges)

    def axis_choices(self) -> list[tuple[str, str]]:
        """(axis key, label) for the axis picker: each axis, what it holds and its range."""
        return [(a.key, f"{a.key}: {span_text(a)}" + (f" · within {self.ranges[a.key].bounds}" if a.key in self.ranges
                                                     else "")) for a in self.data.axes]


def parallel_chart(records: Sequence[dict[str, Any]], metric: str, split: str, selection: str,
                   ranges: dict[str, AxisRange] | None = None) -> ParallelChart | str:
    """The Parallel tab's chart of *records*, keeping the *ranges* of a previous chart that still read on its axes;
    or why there is none (too few runs, nothing varies, no run logged the metric)."""
    try:
        data = parallel(records, metric, split, selection)
    except (NothingToPlot, UnknownSelection, NoValidationSplit) as error:
        return str(error)
    kept = {}
    for key, previous in (ranges or {}).items():
        try:
            kept[key] = axis_range(data, key, previous.bounds)
        except BadRange:
            pass  # its axis is gone (another metric) or its values are: the range goes with them
    return ParallelChart(data, kept)


def shows_images() -> bool:
    """Whether the terminal draws real images (kitty graphics or sixel), where a PNG of the chart reads better than
    text; not under ``$DMLTUI_IMAGES=halfcell`` (whose blocks are too coarse for thin lines)."""
    if image_mode() == "halfcell":
        return False
    try:
        from textual_image.renderable import Image, SixelImage, TGPImage
    except Exception:  # noqa: BLE001 - textual-image's terminal probe raises ZeroDivisionError on a 0-column terminal
        return False
    return Image in (SixelImage, TGPImage)


def parallel_picture(data: Parallel):
    """The chart as a PIL image (``write_parallel_png``'s drawing), for the image widget; slow (matplotlib): call it
    in a worker."""
    import tempfile

    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="dmltui-parallel-") as folder:
        path = write_parallel_png(data, Path(folder) / "parallel.png")
        with Image.open(path) as picture:
            picture.load()
            return picture.copy()
