"""The run screen: one run, live: per-epoch metrics, curves, log tail, resolved config and checkpoints.

While the run is queued or running, a worker thread reads what was appended to its files every
half second (``RunFiles``: only new bytes are read); once it has ended, the files are read one
last time and the polling stops (a resume starts it again).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Log, Static, TabbedContent, TabPane
from textual_plotext import PlotextPlot

from dmltui import runs as run_ops
from dmltui.states import LIVE_STATES
from dmltui.tui.format import tab_bindings
from dmltui.tui.run_view import (
    LOG_LINES,
    LOSS_KEY,
    RunFiles,
    RunUpdate,
    checkpoint_cells,
    column_label,
    config_lines,
    config_text,
    curve_metrics,
    default_config,
    epoch_ticks,
    header_text,
    resolved_config,
    row_cells,
    series,
    split_curves,
)
from dmltui.tui.screens.dialogs import ConfirmScreen
from dmltui.tui.widgets.retrieval import RetrievalPanel
from engine.metric_names import display_name

RUN_POLL_SECONDS = 0.5
TABS = {"metrics": "1 Metrics", "curves": "2 Curves", "log": "3 Log", "config": "4 Config", "checkpoints": "5 Checkpoints",
        "retrieval": "6 Retrieval"}
# ANSI colour names: the same meaning in 16 colours
SPLIT_COLOURS = {"val": "magenta", "test": "cyan", "train": "green"}
LOSS_COLOUR = "yellow"
LOG_TITLES = {"train.log": "train.log", "output.log": "output.log (the process's stdout and stderr)"}


def draw_curves(plot: PlotextPlot, curves: dict[str, tuple[list, list]], title: str, colours: dict[str, str]) -> None:
    """Redraw *plot* with one labelled line per curve (shared by the run and compare screens)."""
    plt = plot.plt
    plt.clear_figure()
    plt.title(title)
    plt.xlabel("epoch")
    for index, (label, (xs, ys)) in enumerate(curves.items()):
        colour = colours.get(label) or list(SPLIT_COLOURS.values())[index % len(SPLIT_COLOURS)]
        plt.plot(xs, ys, label=label, color=colour, marker="braille")
    ticks = epoch_ticks({x for xs, _ in curves.values() for x in xs})
    if ticks:
        plt.xticks(ticks)
    if not curves:
        plt.title(f"{title}: nothing logged yet")
    plot.refresh()


METRIC_WIDTH = 8  # "123.4567": metric_text's four decimals of a loss in the hundreds


class RunScreen(Screen):
    """Opened from the runs screen (enter)."""

    BINDINGS = [
        Binding("escape", "back", "Back", tooltip="Back to the runs"),
        *tab_bindings(TABS),
        Binding("m", "next_metric", "Metric", tooltip="Curves: show the next metric"),
        Binding("x", "stop", "Stop", tooltip="Stop the run: SIGTERM, the engine checkpoints, SIGKILL after 30 s"),
        Binding("r", "resume", "Resume", tooltip="Resume a stopped, crashed or failed run from its checkpoint"),
        Binding("R", "rerun", "Rerun", key_display="R", tooltip="Start a new run with the same config"),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.files: RunFiles | None = None
        self.rows: dict[int, dict[str, Any]] = {}
        self.columns: list[str] = []
        self.metric: str | None = None
        self.last_state: str | None = None
        self._polling = False
        self._final_read = False
        self._poll_error: str | None = None

    @property
    def record(self) -> dict[str, Any] | None:
        return self.app.run_record(self.run_id)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="run-header")
        with TabbedContent(id="run-tabs"):
            with TabPane(TABS["metrics"], id="metrics"):
                yield DataTable(id="epochs", cursor_type="row", zebra_stripes=True)
            with TabPane(TABS["curves"], id="curves"):
                with Horizontal(id="run-curves"):
                    yield PlotextPlot(id="loss-plot")
                    yield PlotextPlot(id="metric-plot")
            with TabPane(TABS["log"], id="log"):
                with Vertical(id="run-logs"):
                    yield Log(id="train-log", max_lines=LOG_LINES)
                    yield Log(id="output-log", max_lines=LOG_LINES)
            with TabPane(TABS["config"], id="config"):
                with VerticalScroll(id="config-scroll"):
                    yield Static("reading the config…", id="config-text")
            with TabPane(TABS["checkpoints"], id="checkpoints"):
                yield Static(id="checkpoint-note")
                yield DataTable(id="checkpoint-table", cursor_type="row")
            with TabPane(TABS["retrieval"], id="retrieval"):
                yield RetrievalPanel(id="retrieval-panel")
        yield Footer()

    def on_mount(self) -> None:
        record = self.record
        if record is None:
            self.query_one("#run-header", Static).update(f"no run {self.run_id} in the store")
            return
        self.sub_title = f"{record['name']} · {record['id']}"
        self.query_one("#train-log", Log).border_title = LOG_TITLES["train.log"]
        self.query_one("#output-log", Log).border_title = LOG_TITLES["output.log"]
        checkpoints = self.query_one("#checkpoint-table", DataTable)
        checkpoints.add_column("file", key="file")
        checkpoints.add_column("size", key="size")
        checkpoints.add_column("modified", key="modified")
        self.files = RunFiles(record["run_dir"])
        self.last_state = record["state"]
        self._update_header()
        self.query_one("#epochs", DataTable).focus()
        self.watch(self.app, "runs_version", self._record_changed, init=False)
        self.load_config(record)
        self._start_poll()
        poll = min(RUN_POLL_SECONDS, self.app.poll_seconds) if self.app.poll_seconds > 0 else 0
        if poll:
            self.set_interval(poll, self._tick)
        self.set_interval(1.0, self._update_header)  # a running run's duration advances
        self._draw_curves()

    # --------------------------------------------------------------------------- polling
    def _live(self) -> bool:
        record = self.record
        return bool(record) and record["state"] in LIVE_STATES

    def _tick(self) -> None:
        if (self._live() or self._final_read) and self._start_poll():
            self._final_read = False

    def _start_poll(self) -> bool:
        """Start a read unless one is running (the tails are not thread-safe); True when one started."""
        if self._polling or self.files is None:
            return False
        self._polling = True
        self.poll_files(self.files)
        return True

    @work(thread=True, group="run-files", exit_on_error=False)
    def poll_files(self, files: RunFiles) -> None:
        try:
            update = files.poll()
        except Exception as error:  # noqa: BLE001 - a torn or unreadable file: say so, try again next tick
            self.app.call_from_thread(self._poll_failed, str(error))
            return
        self.app.call_from_thread(self._apply, update)

    def _poll_failed(self, message: str) -> None:
        self._polling = False
        if message != self._poll_error:  # once, not every half second
            self._poll_error = message
            self.notify(f"reading the run directory failed: {message}", severity="error")

    def _record_changed(self) -> None:
        record = self.record
        if record is None:
            return
        if record["state"] != self.last_state:
            if self.last_state in LIVE_STATES and record["state"] not in LIVE_STATES:
                self._final_read = True  # what the run wrote before it ended
                self._tick()
            self.last_state = record["state"]
            self.refresh_bindings()
        self._update_header()

    def _update_header(self) -> None:
        record = self.record
        if record is not None:
            self.query_one("#run-header", Static).update(header_text(record, self.app.now()))

    # --------------------------------------------------------------------------- applying updates
    def _apply(self, update: RunUpdate) -> None:
        self._polling = False
        self._poll_error = None
        if not self.is_attached:
            return
        if update.rows_reset or update.changed_rows:
            self._apply_rows(update)
            self._draw_curves()
        for name, (lines, reset) in update.logs.items():
            log = self.query_one("#train-log" if name == "train.log" else "#output-log", Log)
            log.border_title = LOG_TITLES[name]
            if reset:
                log.clear()
            log.write_lines(lines)
        for name in update.absent_logs:
            absent = {"train.log": "train.log (none yet)",
                      "output.log": "output.log (none: only runs launched detached by dmltui have one)"}
            self.query_one("#train-log" if name == "train.log" else "#output-log", Log).border_title = absent[name]
        if update.checkpoints is not None:
            self._apply_checkpoints(update.checkpoints)

    def _apply_rows(self, update: RunUpdate) -> None:
        table = self.query_one("#epochs", DataTable)
        at_end = table.row_count == 0 or table.cursor_row >= table.row_count - 1
        if update.rows_reset or update.columns != self.columns:
            if not update.rows_reset:  # a new column (the first evaluation of a split): rebuild from all rows
                for row in update.changed_rows:
                    self.rows[row["epoch"]] = row
                rows = [self.rows[e] for e in sorted(self.rows)]
            else:
                rows = update.changed_rows
                self.rows = {row["epoch"]: row for row in rows}
            self.columns = update.columns
            table.clear(columns=True)
            # fixed widths: a live run's new values never re-measure (and re-lay out) the whole table
            table.add_column(Text("epoch", justify="right"), key="epoch", width=5)
            for key in self.columns:
                label = column_label(key)
                table.add_column(Text(label, justify="right"), key=key, width=max(len(label), METRIC_WIDTH))
            for row in rows:
                table.add_row(*row_cells(row, self.columns), key=str(row["epoch"]))
        else:
            for row in update.changed_rows:
                self.rows[row["epoch"]] = row
                cells = row_cells(row, self.columns)
                key = str(row["epoch"])
                if key in table.rows:
                    for column, cell in zip(["epoch", *self.columns], cells):
                        table.update_cell(key, column, cell)
                else:
                    table.add_row(*cells, key=key)  # epochs arrive in order: a new one is the last
        if table.row_count and (at_end or update.rows_reset):
            table.move_cursor(row=table.row_count - 1, animate=False)  # follow the newest epoch

    def _apply_checkpoints(self, files: list[tuple[str, int, float]]) -> None:
        table = self.query_one("#checkpoint-table", DataTable)
        table.clear()
        for name, size, modified in checkpoint_cells(files):
            table.add_row(name, size, modified, key=name)
        note = ("last.pt: every epoch, resume uses it · best_<split>_<metric>.pt: on improvement" if files
                else "no checkpoints yet: the first is written after the first epoch")
        self.query_one("#checkpoint-note", Static).update(note)

    def _draw_curves(self) -> None:
        rows = [self.rows[e] for e in sorted(self.rows)]
        loss = series(rows, LOSS_KEY)
        draw_curves(self.query_one("#loss-plot", PlotextPlot), {"train": loss} if loss[0] else {}, "loss",
                    {"train": LOSS_COLOUR})
        choices = curve_metrics(self.columns)
        if self.metric not in choices:
            self.metric = "e_recall@1" if "e_recall@1" in choices else (choices[0] if choices else None)
        curves = split_curves(rows, self.metric) if self.metric else {}
        title = display_name(self.metric) if self.metric else "metrics"
        draw_curves(self.query_one("#metric-plot", PlotextPlot), curves, title, SPLIT_COLOURS)

    @work(thread=True, group="run-config", exit_on_error=False)
    def load_config(self, record: dict[str, Any]) -> None:
        try:
            defaults = default_config()
        except Exception:  # noqa: BLE001 - without defaults nothing is highlighted, the values still show
            defaults = {}
        text = config_text(config_lines(resolved_config(record), defaults))
        header = Text("The resolved config. ", style="dim")
        header.append("* marks a value changed from its default.\n\n", style="dim")
        self.app.call_from_thread(self._show_config, header + text)

    def _show_config(self, text: Text) -> None:
        if self.is_attached:
            self.query_one("#config-text", Static).update(text)

    # --------------------------------------------------------------------------- actions
    def action_back(self) -> None:
        self.app.pop_screen()

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        focus = {"metrics": "#epochs", "log": "#train-log", "config": "#config-scroll", "checkpoints": "#checkpoint-table",
                 "retrieval": "#retrieval-table"}
        if tab in focus:
            self.set_focus(self.query_one(focus[tab]))

    @on(TabbedContent.TabActivated)
    def _tab_changed(self) -> None:
        self.refresh_bindings()
        record = self.record
        if record is not None and self.query_one(TabbedContent).active == "retrieval":
            self.query_one(RetrievalPanel).open(record["run_dir"])  # computed once, on the first visit

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next_metric":
            try:
                return self.query_one(TabbedContent).active == "curves"
            except Exception:  # noqa: BLE001 - before compose
                return True
        if action == "stop":  # offered (and in the footer) only when it applies: the footer fits 80 columns
            return self._live()
        if action == "resume":
            record = self.record
            return bool(record) and record["state"] in run_ops.RESUMABLE_STATES
        return True

    def action_next_metric(self) -> None:
        choices = curve_metrics(self.columns)
        if not choices:
            self.notify("no evaluated metric yet", severity="warning")
            return
        index = choices.index(self.metric) if self.metric in choices else -1
        self.metric = choices[(index + 1) % len(choices)]
        self._draw_curves()

    def action_stop(self) -> None:
        record = self.record
        if record is None:
            return
        if record["state"] not in LIVE_STATES:
            self.notify(f"{record['name']} is {record['state']}; only queued or running runs can be stopped", severity="warning")
            return
        self.app.push_screen(ConfirmScreen(f"Stop run {record['name']} ({record['id']})? It checkpoints and can be resumed.",
                                           confirm_label="Stop"),
                             lambda yes: yes and self.app.run_operation("stop", record))

    def action_resume(self) -> None:
        record = self.record
        if record:
            self.app.run_operation("resume", record)

    def action_rerun(self) -> None:
        record = self.record
        if record:
            self.app.push_screen(ConfirmScreen(f"Start a new run with the config of {record['name']}?", confirm_label="Rerun"),
                                 lambda yes: yes and self.app.run_operation("rerun", record))
