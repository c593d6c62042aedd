"""``dmltui plot``: the views that turn a sweep into an answer (``dmltui.sweep_views``): parallel coordinates over the
varied config keys with the metric last, and a metric against one parameter, mean ± std over seeds.

Both draw in the terminal (plotext), or write a PNG (``--png``, atomically), or print their data (``--json``). The
runs are the ids given and/or those ``--where`` selects; without either, every stored run but tuning fold runs.
"""

from __future__ import annotations

import math
import re
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dmltui import compare as cmp
from dmltui import runs as run_ops
from dmltui import selection as sel
from dmltui.cli.common import ExitCode, fail, print_json
from dmltui.cli.compare import SelectOption, WhereOption, chosen_runs
from dmltui.cli.inspect import check_output_path
from dmltui.sweep_views import NothingToPlot, ScatterPoint

app = typer.Typer(help="Sweep views: parallel coordinates of runs, a metric against a parameter.",
                  no_args_is_help=True)

RunIds = Annotated[list[str] | None, typer.Argument(help="run ids (or unique prefixes); default: every stored run "
                                                        "but tuning fold runs, or those --where selects")]
MetricOption = Annotated[str, typer.Option("--metric", "-m", help="the metric (e_recall@1, nmi, map_at_r...)")]
SplitOption = Annotated[str, typer.Option("--split", help="split of the metric: test, val or train")]
PngOption = Annotated[Path | None, typer.Option("--png", help="write the chart as a PNG instead of drawing it")]
JsonOption = Annotated[bool, typer.Option("--json", help="print the chart's data as JSON")]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _records(run_ids: list[str] | None, where: str | None) -> list[dict[str, Any]]:
    """The runs to plot; exit 3 for an unknown id, 2 for a bad query or when nothing is selected."""
    records = chosen_runs(run_ids, where)
    if not records:
        fail("no runs to plot" + (f": --where {where!r} selects none of them" if where is not None else
                                  "; start some, or give run ids"), ExitCode.USAGE)
    return records


def _checked(records: list[dict[str, Any]], metric: str, split: str, select: str | None) -> str:
    """The selection for *records*; exit 2 for a split or metric none of them logged, or a selection they do not
    allow. The note of a default that fell back to test-max goes to stderr."""
    splits = cmp.logged_splits(records)
    if split not in splits:
        fail(f"no run logged split {split!r}; splits with metrics: {', '.join(splits) or 'none'}", ExitCode.USAGE)
    try:
        cmp.check_metrics(records, [metric], split)
        selection, note = sel.choose_selection(records, select)
    except cmp.MetricNotLogged as error:
        fail(str(error), ExitCode.USAGE)
    except (sel.UnknownSelection, sel.NoValidationSplit) as error:
        fail(f"--select {select}: {error}", ExitCode.USAGE)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return selection


def _chart_size() -> tuple[int, int]:
    """The terminal's columns, and its rows less room for the lines printed under the chart (10 to 30 rows)."""
    columns, lines = shutil.get_terminal_size((80, 24))
    return columns, max(10, min(30, lines - 5))


def _print_chart(text: str) -> None:
    """A plotext chart on stdout, in colour on a terminal, as plain text into a pipe or a file."""
    sys.stdout.write((text if sys.stdout.isatty() else ANSI.sub("", text)).rstrip() + "\n")


def _print_lines(lines: list[str | None], width: int) -> None:
    """The lines under a chart, wrapped to its width (None: no line)."""
    import textwrap

    for line in filter(None, lines):
        print(textwrap.fill(line, width))


@app.command("parallel")
def parallel(
    run_ids: RunIds = None,
    where: WhereOption = None,
    metric: MetricOption = "e_recall@1",
    split: SplitOption = "test",
    select: SelectOption = None,
    ranges: Annotated[list[str] | None, typer.Option(
        "--range", metavar="KEY=LOW:HIGH",
        help="only the lines within this range of an axis (numbers, or values of a categorical axis; either bound "
             "may be left out: test/e_recall@1=0.6:); repeatable, every range must hold")] = None,
    png: PngOption = None,
    as_json: JsonOption = False,
) -> None:
    """Parallel coordinates: one axis per config key that varies among the runs (linear, logarithmic where the values
    span two decades, or categorical), the selected metric last, one line per run coloured by the metric."""
    from dmltui.axis_ranges import BadRange, axis_range, narrowed, span_text, split_option, within_all
    from dmltui.sweep_views import parallel as parallel_data

    check_output_path(png, "--png", (".png",))
    records = _records(run_ids, where)
    selection = _checked(records, metric, split, select)
    try:
        data = parallel_data(records, metric, split, selection)
    except NothingToPlot as error:
        fail(str(error), ExitCode.USAGE)
    chosen = []
    for text in ranges or ():
        try:
            chosen.append(axis_range(data, *split_option(text)))
        except BadRange as error:
            fail(f"--range {text}: {error}", ExitCode.USAGE)
    if data.left_out:
        print(f"note: left out {data.left_out} run(s) without {split}/{metric}", file=sys.stderr)
    within = within_all(data, chosen)
    if not within:
        fail(f"no run lies within {' and '.join(map(str, chosen))} (of {len(data.runs)} plotted)", ExitCode.USAGE)
    shown = narrowed(data, within)
    filtered = f"{len(within)} of {len(data.runs)} runs within {' and '.join(map(str, chosen))}" if chosen else None
    if as_json:
        print_json({**shown.to_json(), "ranges": [str(r) for r in chosen], "runs_before_ranges": len(data.runs)})
        return
    footnote = sel.describe(selection, split)
    if png is not None:
        from dmltui.sweep_views import write_parallel_png

        write_parallel_png(shown, png)
        print(f"wrote {png}" + (f" ({filtered})" if filtered else ""), file=sys.stderr)
        print(footnote, file=sys.stderr)
        return
    from dmltui.sweep_views import parallel_text

    width, height = _chart_size()
    _print_chart(parallel_text(shown, width, height))
    axes = "axes, left to right (low to high): " + " · ".join(f"{a.key} {span_text(a)}" for a in data.axes)
    _print_lines([axes, filtered, footnote], width)


@app.command("scatter")
def scatter(
    key: Annotated[str, typer.Argument(help="the config key on the x axis, e.g. optim.lr (config.optim.lr also reads)")],
    run_ids: RunIds = None,
    where: WhereOption = None,
    metric: MetricOption = "e_recall@1",
    split: SplitOption = "test",
    select: SelectOption = None,
    png: PngOption = None,
    as_json: JsonOption = False,
) -> None:
    """The selected metric against one config key: a point per value of the key, the mean ± std (n − 1) over the
    runs with that value (the seeds), as the paper's figures. Says which other keys vary too (each point mixes
    them)."""
    from dmltui.sweep_views import scatter as scatter_points

    check_output_path(png, "--png", (".png",))
    key = key.removeprefix("config.")
    records = _records(run_ids, where)
    _check_key(records, key)
    selection = _checked(records, metric, split, select)
    try:
        points, selection, others = scatter_points(records, key, metric, split, selection)
    except NothingToPlot as error:
        fail(str(error), ExitCode.USAGE)
    if as_json:
        print_json({"key": key, "metric": metric, "split": split, "selection": selection, "also_varying": others,
                    "points": [{"value": p.value, "mean": p.mean, "std": p.std, "n": p.n, "runs": p.runs}
                               for p in points]})
        return
    mixed = f"each point mixes runs that differ in {', '.join(others)} too" if others else None
    footnote = sel.describe(selection, split)
    if png is not None:
        write_scatter_png(points, key, f"{split}/{metric}", selection, png)
        print(f"wrote {png}", file=sys.stderr)
        for line in filter(None, [mixed, footnote]):
            print(line, file=sys.stderr)
        return
    width, height = _chart_size()
    _print_chart(scatter_text(points, key, f"{split}/{metric}", selection, width, max(10, height - len(points))))
    for point in points:
        spread = "" if point.std is None else f" ± {point.std:.4f}"
        print(f"{key} = {_value_label(point.value)}: {point.mean:.4f}{spread} (n = {point.n})")
    _print_lines([mixed, footnote], width)


def _check_key(records: list[dict[str, Any]], key: str) -> None:
    """Exit 2 for a config key none of the runs has, naming the nearest ones."""
    import difflib

    keys = sorted(set().union(*(cmp.flatten_config(run_ops.load_config(r)) for r in records)))
    if key not in keys:
        nearest = difflib.get_close_matches(key, keys, n=4, cutoff=0.6)
        fail(f"no run has config key {key!r}" + (f"; nearest: {', '.join(nearest)}" if nearest else ""),
             ExitCode.USAGE)


# --------------------------------------------------------------------------- the scatter's drawings


def _value_label(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _numeric(points: list[ScatterPoint]) -> bool:
    return all(isinstance(p.value, (int, float)) and not isinstance(p.value, bool) for p in points)


def _logarithmic(points: list[ScatterPoint]) -> bool:
    """As the parallel coordinates' axes: positive values that span two decades or more."""
    values = [p.value for p in points]
    return _numeric(points) and min(values) > 0 and max(values) / min(values) >= 100


def _title(key: str, metric_key: str, selection: str) -> str:
    return f"{metric_key} ({selection}) against {key}: mean ± std over the runs of each value"


def scatter_text(points: list[ScatterPoint], key: str, metric_key: str, selection: str, width: int = 80,
                 height: int = 20) -> str:
    """The scatter drawn with plotext: each value's mean with its std as an error bar."""
    import plotext

    plotext.clear_figure()
    plotext.plotsize(width, height)
    plotext.theme("clear")
    if _numeric(points):
        xs = [float(p.value) for p in points]
        if _logarithmic(points):
            plotext.xscale("log")
    else:
        xs = list(range(1, len(points) + 1))
        plotext.xticks(xs, [_value_label(p.value) for p in points])
    plotext.error(xs, [p.mean for p in points], yerr=[p.std or 0.0 for p in points], color="green")
    plotext.scatter(xs, [p.mean for p in points], marker="●", color="green")
    plotext.title(_title(key, metric_key, selection))
    return plotext.build()


def write_scatter_png(points: list[ScatterPoint], key: str, metric_key: str, selection: str, path: Path) -> Path:
    """The scatter as a PNG (mean and ± std error bars, n beside each point), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from dmltui.inspect import _save_figure

    figure, axis = plt.subplots(figsize=(6.0, 4.0))
    try:
        numeric = _numeric(points)
        xs = [float(p.value) for p in points] if numeric else list(range(len(points)))
        axis.errorbar(xs, [p.mean for p in points], yerr=[p.std if p.std is not None else math.nan for p in points],
                      fmt="o", capsize=3)
        for x, point in zip(xs, points, strict=True):
            axis.annotate(f"n={point.n}", (x, point.mean), textcoords="offset points", xytext=(5, 5), fontsize=7)
        if _logarithmic(points):
            axis.set_xscale("log")
        if not numeric:
            axis.set_xticks(xs, [_value_label(p.value) for p in points])
        axis.set_xlabel(key)
        axis.set_ylabel(metric_key)
        axis.set_title(_title(key, metric_key, selection), fontsize=9)
        figure.tight_layout()
        _save_figure(figure, path)
    finally:
        plt.close(figure)
    return path
