"""The Studies view's charts: the optimisation history, a scatter per searched parameter and the importances.

They only draw what ``dmltui.tui.studies_view`` computed; the colours are ANSI names (readable in 16 colours).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, VerticalScroll
from textual.widgets import Static
from textual_plotext import PlotextPlot

from dmltui.tui.run_view import epoch_ticks
from dmltui.tui.studies_view import History, Importances, Scatter, importance_bar, steps

VALUE_COLOUR = "cyan"
BEST_COLOUR = "green"
IMPORTANCE_BAR = 40  # cells of the bar of a parameter holding all the importance


class HistoryPlot(PlotextPlot):
    """Every complete trial's value as a dot, and the best so far as a step line over the trial numbers."""

    def show(self, data: History, metric: str) -> None:
        plt = self.plt
        plt.clear_figure()
        plt.title(f"{metric} by trial: • a complete trial, line: the best so far")
        plt.xlabel("trial")
        if data.best_trials:
            plt.plot(*steps(data.best_trials, data.best_values), marker="braille", color=BEST_COLOUR)
        if data.trials:  # after the line: a trial that set a new best stays visible on it
            plt.scatter(data.trials, data.values, marker="dot", color=VALUE_COLOUR)
        ticks = epoch_ticks(data.best_trials or data.trials)
        if ticks:
            plt.xticks(ticks)
        else:
            plt.title(f"{metric} by trial: no complete trial yet")
        self.refresh()


def draw_scatter(plot: PlotextPlot, data: Scatter, metric: str) -> None:
    plt = plot.plt
    plt.clear_figure()
    plt.title(f"{metric} by {data.key}{' (log scale)' if data.log else ''}"
              f"{'' if data.xs else ': no complete trial yet'}")
    if data.xs:
        plt.scatter(data.xs, data.ys, marker="dot", color=VALUE_COLOUR)
    if data.ticks:
        plt.xticks(data.ticks, data.labels)
    plt.xlim(*data.xlim)
    plot.refresh()


class ParamScatters(VerticalScroll):
    """One scatter plot per searched parameter, two to a row (one when only one parameter is searched)."""

    def compose(self) -> ComposeResult:
        yield Grid(id="scatter-grid")

    def show(self, scatters: Sequence[Scatter], metric: str) -> None:
        grid = self.query_one("#scatter-grid", Grid)
        plots = list(grid.query(PlotextPlot))
        if len(plots) != len(scatters):  # once per study: what it searches never changes
            grid.remove_children()
            plots = [PlotextPlot(classes="param-scatter") for _ in scatters]
            grid.mount_all(plots)
            grid.set_class(len(scatters) == 1, "-single")
        for plot, data in zip(plots, scatters):
            draw_scatter(plot, data, metric)


def importance_table(importances: Importances) -> Table:
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    table.add_column("parameter", no_wrap=True)
    table.add_column("share", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    for key, share in sorted(importances.values.items(), key=lambda item: -item[1]):
        table.add_row(key, f"{100 * share:.1f}%", Text(importance_bar(share, IMPORTANCE_BAR), style=BEST_COLOUR))
    return table


class ImportancePanel(Static):
    """Optuna's parameter importances as bars, or the one line saying why there are none (yet)."""

    def show(self, importances: Importances | None, *, computing: bool = False) -> None:
        """*importances* None: none computed yet; *computing*: newer ones are being computed."""
        if importances is None:
            self.update(Text("computing the parameter importances…", style="dim"))
            return
        if importances.reason:
            self.update(Text(importances.reason))
            return
        note = Text(f"fANOVA importances (Optuna's default evaluator) over {importances.trials} complete trials; "
                    "they sum to 100%.", style="dim")
        if computing:
            note.append(" Updating for the newest trials…", style="dim")
        self.update(Group(note, Text(""), importance_table(importances)))
