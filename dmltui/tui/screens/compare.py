"""The compare screen: the config keys that differ, best and last metrics, mean ± std by group, overlaid curves.

"Best" is the screen's selection (``dmltui.selection``): the default rule of ``dmltui compare``, and ``s`` steps
through the others the runs allow; the summary line names it.

The numbers are ``dmltui compare``'s (``dmltui.compare``); the export writes the same CSV, Markdown
or LaTeX as ``dmltui compare ... --format``. The runs' metrics.jsonl files are read in a worker
thread, and again (only appended bytes) when a compared run that is still live changes.

The Parallel tab draws the runs' parallel coordinates under the screen's selection and metric (``m`` there), with
ranges on its axes (``r``); the Differences tab compares what two runs on one dataset retrieve, computed the first
time it shows (dmltui/tui/widgets/compare_tabs.py).
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, OptionList, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option
from textual_plotext import PlotextPlot

from dmltui import compare as cmp
from dmltui import selection as sel
from dmltui.states import LIVE_STATES
from dmltui.tui.compare_view import (
    EXPORT_FORMATS,
    CompareFiles,
    compare_split,
    curve_choices,
    curve_title,
    default_export_path,
    export_text,
    group_choices,
    group_rows,
    lasts_of,
    run_curves,
    run_labels,
    runs_table,
    write_export,
)
from dmltui.tui.format import tab_bindings
from dmltui.tui.screens.run import draw_curves
from dmltui.tui.widgets.compare_tabs import DifferencesPanel, ParallelPanel, RangeScreen

TABS = {"runs": "1 Runs", "groups": "2 Groups", "curves": "3 Curves", "parallel": "4 Parallel",
        "differences": "5 Differences"}
RUN_COLOURS = ["cyan", "magenta", "green", "yellow", "blue", "red", "white"]  # ANSI names: fine in 16 colours


class ExportScreen(ModalScreen[tuple[str, str] | None]):
    """Pick a format and a path; returns (format, path) or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, what: str, fmt: str = "markdown"):
        super().__init__()
        self.what = what
        self.fmt = fmt

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog export"):
            yield Label(f"Export {self.what}", classes="question")
            yield OptionList(*(Option(fmt, id=fmt) for fmt in EXPORT_FORMATS), id="formats")
            yield Label("to file (enter writes it; relative to the current directory):")
            yield Input(default_export_path(self.fmt), id="export-path")
            with Horizontal(classes="buttons"):
                yield Button("Export", id="export", variant="primary")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        formats = self.query_one(OptionList)
        self.set_focus(formats)
        formats.highlighted = list(EXPORT_FORMATS).index(self.fmt)

    @on(OptionList.OptionHighlighted, "#formats")
    def _format_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self.fmt = event.option.id
        path = self.query_one("#export-path", Input)
        if path.value.strip() in ("", *(default_export_path(f) for f in EXPORT_FORMATS)):  # not typed by the user
            path.value = default_export_path(self.fmt)

    @on(OptionList.OptionSelected, "#formats")
    def _format_chosen(self) -> None:
        # at once (set_focus, not focus()'s call_later): a path typed right after enter goes into the box
        self.set_focus(self.query_one("#export-path", Input))

    @on(Input.Submitted, "#export-path")
    def _submitted(self) -> None:
        self._export()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "export":
            self._export()
        else:
            self.dismiss(None)

    def _export(self) -> None:
        path = self.query_one("#export-path", Input).value.strip()
        if not path:
            self.notify("give a file name", severity="warning")
            return
        self.dismiss((self.fmt, path))

    def action_cancel(self) -> None:
        self.dismiss(None)


class CompareScreen(Screen):
    """Opened from the runs screen (c) with the selected runs, or every shown run."""

    BINDINGS = [
        Binding("escape", "back", "Back", tooltip="Back to the runs"),
        *tab_bindings(TABS),
        Binding("s", "next_selection", "Selection",
                tooltip="Best values: the next selection (val, last or test-max: which epoch each run's values come from)"),
        Binding("g", "next_group", "Group by", tooltip="Groups: group by the next key (preset, name, a differing config key)"),
        Binding("m", "next_metric", "Metric", tooltip="Curves, Parallel: show the next metric"),
        Binding("r", "set_range", "Range", tooltip="Parallel: a range on an axis (only the runs within are drawn)"),
        Binding("v", "differences_view", "Queries/classes",
                tooltip="Differences: switch between the queries and recall@1 per class"),
        Binding("e", "export", "Export", tooltip="Write the runs (or groups) table to a CSV, Markdown or LaTeX file"),
    ]

    def __init__(self, run_ids: list[str]) -> None:
        super().__init__()
        self.run_ids = list(dict.fromkeys(run_ids))
        self.records: list[dict[str, Any]] = []
        self.split = "test"
        self.selection = "test-max"
        self.metrics: list[str] = []
        self.group_by = "preset"
        self.curve_key: str | None = None
        self.parallel_metric = "e_recall@1"
        self._parallel_stale = True  # drawn when the Parallel tab shows
        self.files: CompareFiles | None = None
        self.rows_by_run: dict[str, list[dict[str, Any]]] = {}
        self._reading = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="compare-summary")
        with TabbedContent(id="compare-tabs"):
            with TabPane(TABS["runs"], id="runs"):
                yield DataTable(id="compare-runs", cursor_type="row", zebra_stripes=True, fixed_columns=1)  # labels stay
            with TabPane(TABS["groups"], id="groups"):
                yield Static(id="groups-note")
                yield DataTable(id="compare-groups", cursor_type="row", zebra_stripes=True)
            with TabPane(TABS["curves"], id="curves"):
                yield PlotextPlot(id="compare-plot")
            with TabPane(TABS["parallel"], id="parallel"):
                yield ParallelPanel(id="parallel-panel")
            with TabPane(TABS["differences"], id="differences"):
                yield DifferencesPanel(id="differences-panel")
        yield Footer()

    def on_mount(self) -> None:
        self.records = [r for r in (self.app.run_record(run_id) for run_id in self.run_ids) if r is not None]
        self.sub_title = f"comparing {len(self.records)} runs"
        self.split = compare_split(self.records)
        self.selection, _ = sel.choose_selection(self.records)
        self.metrics = cmp.default_metrics(self.records, self.split)
        self.curve_key = curve_choices(self.metrics, self.split)[0]
        self.parallel_metric = self.metrics[0] if self.metrics else self.parallel_metric
        self.files = CompareFiles(self.records)
        self.watch(self.app, "runs_version", self._runs_changed, init=False)
        self.query_one("#compare-runs", DataTable).focus()
        self._update_summary()
        self.redraw()
        self._read()

    # --------------------------------------------------------------------------- data
    def _runs_changed(self) -> None:
        was_live = any(r["state"] in LIVE_STATES for r in self.records)
        records = [r for r in (self.app.run_record(run_id) for run_id in self.run_ids) if r is not None]
        if records == self.records:  # another run changed
            return
        self.records = records
        if self.selection not in sel.selection_choices(records):  # a run without a validation split came in
            self.selection, _ = sel.choose_selection(records)
        self._update_summary()
        self.redraw()
        if was_live:
            self._read()

    def _read(self) -> None:
        if self._reading or self.files is None:
            return
        self._reading = True
        self.read_metrics(self.files)

    @work(thread=True, group="compare-files", exit_on_error=False)
    def read_metrics(self, files: CompareFiles) -> None:
        try:
            files.poll()
            rows = files.rows_by_run()
        except Exception as error:  # noqa: BLE001 - an unreadable file: say so, show the best values anyway
            self.app.call_from_thread(self._read_done, None, str(error))
            return
        self.app.call_from_thread(self._read_done, rows, None)

    def _read_done(self, rows: dict[str, list[dict[str, Any]]] | None, error: str | None) -> None:
        self._reading = False
        if error:
            self.notify(f"reading metrics.jsonl failed: {error}", severity="error")
        if rows is not None and self.is_attached:
            self.rows_by_run = rows
            self.redraw()

    # --------------------------------------------------------------------------- drawing
    def _update_summary(self) -> None:
        unfinished = sum(r["state"] != "finished" for r in self.records)
        parts = [f"{len(self.records)} runs", self.split, f"{sel.SHORT_LABELS[self.selection]} (s)", "x100 (epoch)",
                 "bold: best"]
        if unfinished:
            parts.insert(1, f"{unfinished} not finished")
        missing = len(self.run_ids) - len(self.records)
        if missing:
            parts.append(f"[red]{missing} no longer in the store[/]")
        self.query_one("#compare-summary", Static).update(" · ".join(parts))

    def redraw(self) -> None:
        self._draw_runs()
        self._draw_groups()
        self._draw_curves()
        self._draw_parallel()

    def _draw_runs(self) -> None:
        table = self.query_one("#compare-runs", DataTable)
        cursor = table.cursor_row
        table.clear(columns=True)
        labels = run_labels(self.records)
        rows = runs_table(self.records, self.metrics, self.split, lasts_of(self.rows_by_run, self.metrics, self.split),
                          self.selection)
        # widths from the content itself, set up front: the table needs no measuring pass before it reads right
        table.add_column("", key="label", width=max((len(row.label) for row in rows), default=0))
        for c, record in enumerate(self.records):
            width = max([len(labels[record["id"]]), *(len(row.cells[c]) for row in rows)])
            table.add_column(labels[record["id"]], key=record["id"], width=width)
        for row in rows:
            numeric = row.label == "epoch" or row.label.startswith(("best ", "last "))
            cells = [Text(cell, style="bold" if c in row.bold else "", justify="right" if numeric else "left")
                     for c, cell in enumerate(row.cells)]
            table.add_row(Text(row.label, style="bold"), *cells, key=row.label)
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1), column=0, animate=False)

    def _draw_groups(self) -> None:
        table = self.query_one("#compare-groups", DataTable)
        cursor = table.cursor_row
        table.clear(columns=True)
        rows = group_rows(self.records, self.group_by, self.metrics, self.split, self.selection)
        shown = cmp.to_table_rows(rows, self.metrics)
        for c, header in enumerate(shown.headers):
            table.add_column(Text(header, justify="right" if c >= shown.lead else "left"), key=str(c))
        for r, line in enumerate(shown.rows):
            table.add_row(*(Text(cell, style="bold" if (r, c) in shown.bold else "",
                                 justify="right" if c >= shown.lead else "left") for c, cell in enumerate(line)))
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1), column=0, animate=False)
        unfinished = sum(r["state"] != "finished" for r in self.records)
        note = f"by [b]{escape(self.group_by)}[/b] (g: next) · mean ± std (ddof=0)"
        note += f" · {escape(shown.note)}" if shown.note else ""
        if unfinished:
            note += f" · includes {unfinished} unfinished"
        self.query_one("#groups-note", Static).update(note)

    def _draw_curves(self) -> None:
        key = self.curve_key or "train/loss"
        labels = run_labels(self.records)
        curves = run_curves(self.rows_by_run, key)
        named = {labels[run_id]: curves[run_id] for run_id in self.run_ids if run_id in curves and run_id in labels}
        colours = {labels[r["id"]]: RUN_COLOURS[i % len(RUN_COLOURS)] for i, r in enumerate(self.records)}
        draw_curves(self.query_one("#compare-plot", PlotextPlot), named, curve_title(key), colours)

    def _draw_parallel(self) -> None:
        """Now where the Parallel tab shows, else when it next does (the val and last selections read files)."""
        if self.query_one(TabbedContent).active != "parallel":
            self._parallel_stale = True
            return
        self._parallel_stale = False
        self.query_one(ParallelPanel).show(self.records, self.parallel_metric, self.split, self.selection)

    # --------------------------------------------------------------------------- actions
    def action_back(self) -> None:
        self.app.pop_screen()

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        focus = {"runs": "#compare-runs", "groups": "#compare-groups"}
        if tab in focus:  # at once, not focus()'s later: keys pressed together with this one go to the table
            self.set_focus(self.query_one(focus[tab]))
        elif tab == "differences":
            self.set_focus(self.query_one(DifferencesPanel).focus_target())

    @on(TabbedContent.TabActivated)
    def _tab_changed(self) -> None:
        self.refresh_bindings()
        active = self.query_one(TabbedContent).active
        if active == "parallel" and self._parallel_stale:
            self._draw_parallel()
        elif active == "differences":
            self.query_one(DifferencesPanel).open(self.records)  # computed once, on the first visit

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        try:
            active = self.query_one(TabbedContent).active
        except Exception:  # noqa: BLE001 - before compose
            return True
        if action == "next_group":
            return active == "groups"
        if action == "next_metric":
            return active in ("curves", "parallel")
        if action == "set_range":
            return active == "parallel"
        if action == "differences_view":
            return active == "differences"
        if action == "export":  # the runs or groups table
            return active not in ("parallel", "differences")
        return True

    def action_next_selection(self) -> None:
        choices = sel.selection_choices(self.records)
        index = choices.index(self.selection) if self.selection in choices else -1
        self.selection = choices[(index + 1) % len(choices)]
        self._update_summary()
        self._draw_runs()
        self._draw_groups()
        self._draw_parallel()

    def action_next_group(self) -> None:
        choices = group_choices(self.records)
        index = choices.index(self.group_by) if self.group_by in choices else -1
        self.group_by = choices[(index + 1) % len(choices)]
        self._draw_groups()

    def action_next_metric(self) -> None:
        if self.query_one(TabbedContent).active == "parallel":
            if self.metrics:
                index = self.metrics.index(self.parallel_metric) if self.parallel_metric in self.metrics else -1
                self.parallel_metric = self.metrics[(index + 1) % len(self.metrics)]
                self._draw_parallel()
            return
        choices = curve_choices(self.metrics, self.split)
        index = choices.index(self.curve_key) if self.curve_key in choices else -1
        self.curve_key = choices[(index + 1) % len(choices)]
        self._draw_curves()

    def action_set_range(self) -> None:
        panel = self.query_one(ParallelPanel)
        if panel.chart is None:
            self.notify(f"no chart to set a range on: {panel.reason}", severity="warning")
            return
        self.app.push_screen(RangeScreen(panel.chart), lambda chart: chart and panel.set_chart(chart))

    def action_differences_view(self) -> None:
        self.query_one(DifferencesPanel).action_view()

    def export_rows(self) -> tuple[str, list[dict[str, Any]]]:
        """What the export writes: the groups table on the Groups tab, else the runs table (a row per run)."""
        if self.query_one(TabbedContent).active == "groups":
            return (f"the groups (by {self.group_by})",
                    group_rows(self.records, self.group_by, self.metrics, self.split, self.selection))
        return f"the {len(self.records)} runs", cmp.comparison(self.records, self.metrics, self.split, self.selection)

    def action_export(self) -> None:
        what, rows = self.export_rows()
        self.app.push_screen(ExportScreen(what), lambda choice: choice and self.write_file(*choice, rows))

    @work(thread=True, group="export", exit_on_error=False)
    def write_file(self, fmt: str, path: str, rows: list[dict[str, Any]]) -> None:
        try:
            written = write_export(path, export_text(rows, self.metrics, fmt))
            message, severity = f"wrote {written}", "information"
        except (OSError, ValueError) as error:
            message, severity = f"export failed: {error}", "error"
        self.app.call_from_thread(self.notify, message, severity=severity, timeout=8)
