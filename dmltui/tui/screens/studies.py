"""The Studies view: hyperparameter studies (``dmltui tune``), live: trials, best so far, parameter plots, importances.

The runs screen's S key calls :func:`open_studies`: the list of studies when there are several (or how to start one
when there is none), else the one study. A study's summary (``read_summary``: a stat and a small JSON file while the
journal has not changed) is read again in a worker every other poll of the runs; the parameter importances (seconds
of fANOVA) are computed in another worker whenever the number of complete trials changed.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from dmltui.tui.format import tab_bindings
from dmltui.tui.studies_view import (
    FOLD_RUN_COLUMNS,
    START_COMMAND,
    STUDY_COLUMNS,
    Importances,
    ParamAxis,
    final_of,
    fold_of,
    fold_run_cells,
    header_text,
    history,
    one_line,
    param_axes,
    param_importances,
    read_summaries,
    scatter,
    study_cells,
    trial_cells,
    trial_columns,
    trial_note,
)
from dmltui.tui.widgets.study_charts import HistoryPlot, ImportancePanel, ParamScatters
from dmltui.tune import study as studies

TABS = {"trials": "1 Trials", "history": "2 History", "params": "3 Params", "importance": "4 Importance"}


def poll_interval(app: App) -> float:
    """Every other poll of the runs (2 s by default): a study changes at most once per epoch of a fold run. 0 (no
    polling) when the app polls nothing, as in snapshots."""
    return 2 * app.poll_seconds if app.poll_seconds > 0 else 0


def open_studies(app: App) -> None:
    """The one study, or the list of studies (with how to start one when there is none)."""
    names = studies.list_studies()
    app.push_screen(StudyScreen(names[0]) if len(names) == 1 else StudiesScreen())


def empty_text() -> Text:
    return Text.assemble(
        ("No studies yet.", "bold"), "\n\n",
        "A study searches hyperparameters with Optuna the honest way: every trial trains class-disjoint folds of the "
        "training classes and is scored on validation only; the test split is never seen. Its fold runs are ordinary "
        "runs, tagged study:NAME.\n\n",
        "Start one from a shell:\n\n", (START_COMMAND, "bold"), "\n\n",
        ("uv run dmltui tune start --help", "bold"), " lists the forms a --space takes and the options. A study shows "
        "here as soon as it starts; ", ("escape", "bold"), " goes back to the runs.")


class StudiesScreen(Screen):
    """Every study: its trials done of those asked for, the best value. Opened from the runs screen (S)."""

    BINDINGS = [
        Binding("escape", "back", "Back", tooltip="Back to the runs"),
        Binding("enter", "open", "Open", show=False, tooltip="Open the study under the cursor"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.summaries: dict[str, tuple[dict[str, Any] | None, str | None]] | None = None
        self._reading = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="studies-summary")
        yield DataTable(id="study-list", cursor_type="row", zebra_stripes=True)
        yield Static(id="studies-empty")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "hyperparameter studies"
        table = self.query_one("#study-list", DataTable)
        for key, header in STUDY_COLUMNS.items():
            table.add_column(header, key=key)
        table.display = False
        self.query_one("#studies-empty", Static).display = False
        table.focus()
        self._read()
        if interval := poll_interval(self.app):
            self.set_interval(interval, self._tick)

    def _tick(self) -> None:
        if self.is_current:  # not under an open study: that one reads the same summary
            self._read()

    def _read(self) -> None:
        if not self._reading:
            self._reading = True
            self.read_studies()

    @work(thread=True, group="studies-read", exit_on_error=False)
    def read_studies(self) -> None:
        summaries = read_summaries(studies.list_studies())
        self.app.call_from_thread(self._show, summaries)

    def _show(self, summaries: dict[str, tuple[dict[str, Any] | None, str | None]]) -> None:
        self._reading = False
        if not self.is_attached or summaries == self.summaries:
            return
        self.summaries = summaries
        table, empty = self.query_one("#study-list", DataTable), self.query_one("#studies-empty", Static)
        table.display, empty.display = bool(summaries), not summaries
        if not summaries:
            empty.update(empty_text())
            self.query_one("#studies-summary", Static).update("")
            return
        cursor = self.cursor_name()
        table.clear()
        for name, (summary, error) in summaries.items():
            cells = study_cells(name, summary, error)
            table.add_row(*(cells[key] for key in STUDY_COLUMNS), key=name)
        if cursor in summaries:
            table.move_cursor(row=list(summaries).index(cursor), animate=False)
        running = sum(1 for summary, _ in summaries.values() if summary and summary["counts"]["running"])
        self.query_one("#studies-summary", Static).update(
            f"{len(summaries)} studies · {running} with running trials · enter opens one")

    def cursor_name(self) -> str | None:
        table = self.query_one("#study-list", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    @on(DataTable.RowSelected, "#study-list")
    def _row_chosen(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        name = self.cursor_name()
        if name:
            self.app.push_screen(StudyScreen(name))

    def action_back(self) -> None:
        self.app.pop_screen()


class StudyScreen(Screen):
    """One study: its trials and their fold runs, the optimisation history, a scatter per parameter, importances."""

    BINDINGS = [
        Binding("escape", "back", "Back", tooltip="Back"),
        *tab_bindings(TABS),
        Binding("enter", "open", "Open", show=False,
                tooltip="On a trial: go to its fold runs; on a fold run: open the run (metrics, curves, log, config)"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.study_name = name
        self.summary: dict[str, Any] | None = None
        self.axes: list[ParamAxis] = []
        self.importances: Importances | None = None
        self.error: str | None = None
        self._reading = False
        self._computing = False
        self._importance_for: int | None = None  # complete trials the shown (or computing) importances are over

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("reading the study…", id="study-header")
        with TabbedContent(id="study-tabs"):
            with TabPane(TABS["trials"], id="trials"):
                yield DataTable(id="study-trials", cursor_type="row", zebra_stripes=True)
                yield Static(id="trial-note")
                yield DataTable(id="trial-runs", cursor_type="row")
            with TabPane(TABS["history"], id="history"):
                yield HistoryPlot(id="study-history")
            with TabPane(TABS["params"], id="params"):
                yield ParamScatters(id="study-params")
            with TabPane(TABS["importance"], id="importance"):
                with VerticalScroll(id="importance-scroll"):
                    yield ImportancePanel(id="study-importance")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"study {self.study_name}"
        runs = self.query_one("#trial-runs", DataTable)
        for key, header, width in FOLD_RUN_COLUMNS:
            runs.add_column(header, key=key, width=width)
        self.query_one(ImportancePanel).show(None)
        self.query_one("#study-trials", DataTable).focus()
        self.watch(self.app, "runs_version", self._runs_changed, init=False)
        self._read()
        if interval := poll_interval(self.app):
            self.set_interval(interval, self._read)

    # --------------------------------------------------------------------------- reading
    def _read(self) -> None:
        """Start a read unless one is under way."""
        if not self._reading:
            self._reading = True
            self.read_study(self.study_name)

    @work(thread=True, group="study-read", exit_on_error=False)
    def read_study(self, name: str) -> None:
        try:
            summary = studies.read_summary(name)
            axes, error = param_axes(summary["spec"]), None  # off the UI thread: it imports the config schema
        except Exception as problem:  # noqa: BLE001 - a deleted study or a torn journal: say so, keep what is shown
            summary, axes, error = None, [], one_line(problem)
        self.app.call_from_thread(self._read_done, summary, axes, error)

    def _read_done(self, summary: dict[str, Any] | None, axes: list[ParamAxis], error: str | None) -> None:
        self._reading = False
        if not self.is_attached:
            return
        changed = error != self.error or (summary is not None and summary != self.summary)
        self.error = error
        if summary is not None:
            self.summary, self.axes = summary, axes
        if changed:
            self.redraw()
            self._update_importances()

    def _runs_changed(self) -> None:
        """The fold runs' states and the finalized runs' test values come from the store."""
        if self.summary is not None:
            self._update_header()
            self._show_trial_runs()

    # --------------------------------------------------------------------------- importances
    def _update_importances(self) -> None:
        """Compute them again when the complete trials changed, one computation at a time."""
        if self.summary is None or self._computing:
            return
        complete = self.summary["counts"]["complete"]
        if complete == self._importance_for:
            return
        self._computing, self._importance_for = True, complete
        if self.importances is not None:
            self.query_one(ImportancePanel).show(self.importances, computing=True)
        self.compute_importances(self.study_name, self.summary)

    @work(thread=True, group="study-importance", exit_on_error=False)
    def compute_importances(self, name: str, summary: dict[str, Any]) -> None:
        self.app.call_from_thread(self._importances_done, param_importances(name, summary))

    def _importances_done(self, importances: Importances) -> None:
        self._computing = False
        if not self.is_attached:
            return
        self.importances = importances
        self.query_one(ImportancePanel).show(importances)
        self._update_importances()  # trials that completed meanwhile

    # --------------------------------------------------------------------------- drawing
    @property
    def metric(self) -> str:
        return self.summary["spec"]["metric"] if self.summary else ""

    def redraw(self) -> None:
        self._update_header()
        if self.summary is None:
            return
        self._draw_trials()
        self._show_trial_runs()
        self.query_one(HistoryPlot).show(history(self.summary), self.metric)
        self.query_one(ParamScatters).show([scatter(self.summary, axis) for axis in self.axes], self.metric)

    def _update_header(self) -> None:
        text = Text()
        if self.summary is not None:
            text = header_text(self.summary, final_of(self.summary, self.app.run_record))
        if self.error:
            text.append(("\n" if text else "") + f"reading the study failed: {self.error}", style="red")
        self.query_one("#study-header", Static).update(text)

    def _draw_trials(self) -> None:
        table = self.query_one("#study-trials", DataTable)
        first = not table.columns
        if first:
            # fixed widths: a refresh while trials run never re-measures (and re-lays out) the table
            for key, header, width in trial_columns(self.axes):
                table.add_column(Text(header, justify="left" if key == "state" else "right"), key=key, width=width)
        best = self.summary["best"]["number"] if self.summary["best"] else None
        # the first time on the best trial (else the newest), then where the user left it
        wanted = self.cursor_trial_key() if not first else str(best if best is not None else self._newest_number())
        table.clear()
        for row in self.summary["trials"]:
            table.add_row(*trial_cells(row, self.axes, best), key=str(row["number"]))
        keys = [str(row["number"]) for row in self.summary["trials"]]
        if wanted in keys:
            table.move_cursor(row=keys.index(wanted), animate=False)

    def _newest_number(self) -> int | None:
        return self.summary["trials"][-1]["number"] if self.summary and self.summary["trials"] else None

    def cursor_trial_key(self) -> str | None:
        table = self.query_one("#study-trials", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def cursor_trial(self) -> dict[str, Any] | None:
        key = self.cursor_trial_key()
        if key is None or self.summary is None:
            return None
        return next((row for row in self.summary["trials"] if str(row["number"]) == key), None)

    def _show_trial_runs(self) -> None:
        """The fold runs of the trial under the cursor, as the store has them now."""
        row = self.cursor_trial()
        note, table = self.query_one("#trial-note", Static), self.query_one("#trial-runs", DataTable)
        if row is None:
            note.update(Text("no trials yet: the tuner asks Optuna for the first one when it starts", style="dim"))
            table.clear()
            return
        note.update(trial_note(row, self.metric))
        records = [r for r in (self.app.run_record(run_id) for run_id in row.get("runs", [])) if r is not None]
        records.sort(key=lambda r: (fold_of(r) is None, fold_of(r) or 0))
        keep = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value if table.row_count else None
        table.clear()
        for record in records:
            table.add_row(*fold_run_cells(record, self.metric), key=record["id"])
        ids = [r["id"] for r in records]
        if keep in ids:
            table.move_cursor(row=ids.index(keep), animate=False)

    @on(DataTable.RowHighlighted, "#study-trials")
    def _trial_highlighted(self) -> None:
        self._show_trial_runs()

    # --------------------------------------------------------------------------- actions
    @on(DataTable.RowSelected, "#study-trials")
    def _trial_chosen(self) -> None:
        runs = self.query_one("#trial-runs", DataTable)
        if runs.row_count:
            self.set_focus(runs)
        else:
            self.notify("this trial has no fold run in the store", severity="warning")

    @on(DataTable.RowSelected, "#trial-runs")
    def _run_chosen(self) -> None:
        self.open_run()

    def open_run(self) -> None:
        from dmltui.tui.screens.run import RunScreen

        table = self.query_one("#trial-runs", DataTable)
        if table.row_count:
            self.app.push_screen(RunScreen(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value))

    def action_open(self) -> None:
        if self.focused is self.query_one("#trial-runs", DataTable):
            self.open_run()
        else:
            self._trial_chosen()

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        # focus left on a table of the hidden tab would move to the next focusable widget, and TabbedContent shows
        # the tab holding the focus: the Trials tab again. The history plot takes no focus: nothing holds it there.
        focus = {"trials": "#study-trials", "params": "#study-params", "importance": "#importance-scroll"}
        self.set_focus(self.query_one(focus[tab]) if tab in focus else None)
