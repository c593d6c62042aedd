"""The runs screen: every stored run, live; filter, sort, select, and act on runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from dmltui.columns import BUILTIN, Column, column
from dmltui.compare import UnknownGroupKey, logged_metrics
from dmltui.listing import parse_filter, record_filter, search_text, sort_runs, sort_value
from dmltui.states import LIVE_STATES
from dmltui.tui.format import MARK, group_cells, run_cells
from dmltui.tui.screens.dialogs import ChoiceScreen, ConfirmScreen
from dmltui.tui.widgets.gpu_panel import GpuPanel
from dmltui.tui.widgets.runs_table import RunsTable
from dmltui.workspace import Group, group_statistics, is_group_row, make_groups, sort_groups, table_columns, table_rows
from engine.metric_names import display_name

if TYPE_CHECKING:
    from dmltui.views import View

PATCH_LIMIT = 50  # more changed runs than this at once: redraw the list


def changed_keys(records: list[dict[str, Any]]) -> list[str]:
    """The config keys some run set (its summary's config_changes): what a sweep varies, sorted."""
    return sorted({key for run in records for key, value in (run.get("config_changes") or {}).items() if value is not None})


class RunsScreen(Screen):
    """The home screen."""

    BINDINGS = [
        Binding("enter", "open", "Open", show=False, tooltip="Open the run under the cursor: live metrics, curves, log, config"),
        Binding("n", "new_run", "New", tooltip="Compose a run or sweep from a preset and launch it"),
        Binding("slash", "focus_filter", "Filter", key_display="/", priority=True,
                tooltip="Filter runs: words, state:, tag:, dataset:, preset:, or a query (best.test.e_recall@1 >= 0.6)"),
        Binding("s", "sort", "Sort", tooltip="Sort by a column or a metric"),
        Binding("o", "flip_order", "Order", show=False, tooltip="Reverse the sort order"),
        Binding("t", "tag_filter", "Tag", show=False, tooltip="Show only runs with a tag"),
        Binding("space", "toggle_select", "Select", tooltip="Select or unselect the run (a group: all its runs) for comparison"),
        Binding("c", "compare", "Compare", tooltip="Compare the selected runs (or all shown runs)"),
        Binding("S", "studies", "Studies", show=False, key_display="S",
                tooltip="Hyperparameter studies (dmltui tune): trials, plots, importances"),
        Binding("x", "stop", "Stop", tooltip="Stop the run: SIGTERM, the engine checkpoints, SIGKILL after 30 s"),
        Binding("f", "pick_columns", "Columns", tooltip="Add or remove columns: run fields, config keys, metrics"),
        Binding("g", "group", "Group", tooltip="Group the runs by a field or config key: count and mean ± std per group"),
        Binding("e", "annotate", "Tags", tooltip="Edit the tags and note of the run (or the tags of the selected runs)"),
        Binding("v", "views", "Views", tooltip="Saved views: a name for this filter, columns, sort and grouping"),
        Binding("r", "resume", "Resume", show=False, tooltip="Resume a stopped, crashed or failed run from its checkpoint"),
        Binding("R", "rerun", "Rerun", show=False, key_display="R", tooltip="Start a new run with the same config"),
        Binding("d", "delete", "Delete", show=False, tooltip="Delete the run and its run directory"),
        Binding("escape", "clear", "Clear", show=False, tooltip="Clear the filter and the selection"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sort_field = "created_at"
        self.descending = True
        self.selected: set[str] = set()
        self.shown: list[dict[str, Any]] = []  # the runs the filter passes, sorted
        self.rows: list[Any] = []  # what the table shows: those runs, or groups and the runs of the open ones
        self.column_keys: list[str] | None = None  # None: the default columns
        self.columns: list[Column] = []
        self.group_by: str | None = None
        self.expanded: set[str] = set()  # the open groups' ids
        self._stats: tuple[Any, dict[str, dict[str, dict]] | None] | None = None  # (groups' signature, statistics)
        self._search_texts: dict[str, tuple[dict[str, Any], str]] = {}
        self._filter_text = ""  # the filter box's text that _passes was made from
        self._passes: Callable[[dict[str, Any]], bool] | None = None  # the filter's test of a run; None: all pass

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="/ filter: words, state:running, tag:paper, dataset:cub200, preset:…", id="filter")
        yield Static(id="filter-error")
        yield Static(id="summary")
        table = RunsTable(table_columns(None, []), id="runs")
        yield table
        yield Static(id="empty")
        yield GpuPanel()
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.app, "runs_version", self._runs_changed, init=False)
        self.set_interval(1.0, self._tick)
        self.query_one(DataTable).focus()
        self.redraw()

    # --------------------------------------------------------------------------- drawing
    @property
    def table(self) -> RunsTable:
        return self.query_one("#runs", RunsTable)

    def _runs_changed(self) -> None:
        changed = self.app.monitor.changed_ids
        if changed is None or len(changed) > PATCH_LIMIT or not self._patch(changed):
            self.redraw()

    def _patch(self, changed: set[str]) -> bool:
        """Show the changed runs' new records in their rows, when that keeps which runs are shown and their order
        (a live run's epoch or metric moved): a few cells instead of filtering and sorting thousands of runs.
        False when a full redraw is needed."""
        if self.group_by:
            return False  # a group's count and statistics may have changed
        passes = self.current_filter() or (lambda _record: True)
        position = {record["id"]: index for index, record in enumerate(self.shown)}
        shown = list(self.shown)
        for run_id in changed:
            record = self.app.monitor.records[run_id]
            if record.get("executor") == "slurm" and self.column_keys is None and "where" not in self.table.column_order:
                return False  # the first run on SLURM: the "where" column appears
            index = position.get(run_id)
            if (index is not None) != passes(record):
                return False
            if index is None:
                continue
            if sort_value(shown[index], self.sort_field) != sort_value(record, self.sort_field):
                return False
            shown[index] = record
        self.shown = self.rows = shown
        self.table.show(shown, self._cells())
        self._update_summary()
        return True

    def _search_text(self, record: dict[str, Any]) -> str:
        """:func:`search_text`, computed once per record object (filtering re-runs on every keystroke)."""
        cached = self._search_texts.get(record["id"])
        if cached is None or cached[0] is not record:
            cached = self._search_texts[record["id"]] = (record, search_text(record))
        return cached[1]

    def current_filter(self) -> Callable[[dict[str, Any]], bool] | None:
        """The filter box's test of a run (None: no filter), made once per text (it is asked on every redraw): a query
        (``dmltui.query``) when the text starts like one, else filter words. A query that does not compile keeps the
        previous test, and so the rows shown, and says why under the box."""
        text = self.query_one("#filter", Input).value
        if text != self._filter_text:
            self._filter_text = text
            error = self._make_filter(text)
            box = self.query_one("#filter-error", Static)
            box.update(Text(error))
            box.display = bool(error)
        return self._passes

    def _make_filter(self, text: str) -> str:
        """Set the filter's test from *text*; returns the query's error, empty when there is none."""
        if not text.strip():
            self._passes = None
            return ""
        from dmltui import query  # lark: loaded with the first filter (warm_query_parser starts on "/")

        if query.looks_like_query(text):
            try:
                self._passes = query.compile_query(text, query.KnownFields(self.app.monitor.runs())).matches
            except query.QueryError as error:
                return f"query: {error}"
            return ""
        filters = parse_filter(text)
        self._passes = record_filter(**filters, text_of=self._search_text) if filters else None
        return ""

    def visible_runs(self) -> list[dict[str, Any]]:
        passes = self.current_filter()
        records = self.app.monitor.runs()
        if passes is not None:
            records = list(filter(passes, records))
        return sort_runs(records, self.sort_field, descending=self.descending)

    def redraw(self, *, force: bool = False) -> None:
        """Show the filtered, sorted runs (or their groups); *force* re-renders every cell (the selection marks
        changed)."""
        self.shown = self.visible_runs()
        self.columns = table_columns(self.column_keys, self.app.monitor.records.values(), grouped=bool(self.group_by))
        groups = self._groups(self.shown)
        self.rows = table_rows(self.shown, groups, self.expanded, self.sort_field, descending=self.descending)
        self.table.set_columns(self.columns)
        self.table.show(self.rows, self._cells(), force=force, cursor=self.cursor_run_id())
        self._update_summary()
        self._update_empty_state()

    def _cells(self) -> Callable[[Any], dict[str, Any]]:
        now, columns, selected = self.app.now(), self.columns, self.selected

        def cells(row: Any) -> dict[str, Any]:
            if isinstance(row, Group):
                chosen = sum(run["id"] in selected for run in row.runs)
                return group_cells(row, columns, expanded=row.id in self.expanded, selected=chosen)
            return run_cells(row, columns, selected=row["id"] in selected, now=now)

        return cells

    def _groups(self, records: list[dict[str, Any]]) -> list[Group] | None:
        """The shown runs' groups under self.group_by, with their statistics where computed for these very
        records (else a worker computes them, and the rows show … meanwhile)."""
        if not self.group_by:
            return None
        try:
            groups = make_groups(records, self.group_by)
        except UnknownGroupKey as error:
            self.group_by = None
            self.notify(str(error), severity="error")
            return None
        # the same run records (the monitor replaces a record that changed) in any order: the same statistics
        signature = (self.group_by, tuple(c.key for c in self.columns if c.metric), frozenset(map(id, records)))
        if self._stats is not None and self._stats[0] == signature:
            for group in groups:  # (None while the worker computes them)
                if self._stats[1] is not None:
                    group.stats = self._stats[1].get(group.id, {})
        else:
            self._stats = (signature, None)
            self._compute_statistics(signature, groups, self.group_by, self.columns)
        return sort_groups(groups, self.sort_field, self.columns, descending=self.descending)

    def _compute_statistics(self, signature: Any, groups: list[Group], group_by: str, columns: list[Column]) -> None:
        """compare --group-by's mean ± std of each group's metric cells, in a thread (run_worker, not @work: that
        one describes a worker by the repr of its arguments, thousands of records)."""

        def compute() -> None:
            statistics = group_statistics(groups, group_by, columns)
            self.app.call_from_thread(self._statistics_ready, signature, statistics)

        self.run_worker(compute, thread=True, group="group-statistics", exclusive=True, exit_on_error=False,
                        description=f"group statistics by {group_by}")

    def _statistics_ready(self, signature: Any, statistics: dict[str, dict[str, dict]]) -> None:
        if self._stats is not None and self._stats[0] == signature:  # else the groups changed meanwhile
            self._stats = (signature, statistics)
            self.redraw()

    def _update_empty_state(self) -> None:
        """In place of an empty table: what the tool is and how to start, or why the filter shows nothing."""
        empty = self.query_one("#empty", Static)
        showing = not self.shown
        self.table.display, empty.display = not showing, showing
        if not showing:
            return
        filter_text = self.query_one("#filter", Input).value.strip()
        if self.app.monitor.records and filter_text:
            empty.update(Text.assemble(
                "No runs match ", (filter_text, "bold"), ".\n\n",
                ("escape", "bold"), " clears the filter, ", ("/", "bold"), " edits it."))
            return
        empty.update(Text.assemble(
            ("No runs yet.", "bold"), "\n\n",
            "dmltui trains deep metric learning models and keeps track of the runs: live metrics, curves, "
            "logs, and paper tables over seeds.\n\n",
            (" n ", "bold reverse"), "  start a run from a preset (try ", ("quickstart", "bold"), ": a minute on the CPU)\n",
            (" ? ", "bold reverse"), "  every key, on every screen\n\n",
            "From a shell: ", ("uv run dmltui quickstart", "bold")))

    def _update_summary(self) -> None:
        records = self.app.monitor.records
        live = self.app.monitor.live_count()
        parts = [f"{len(self.shown)} of {len(records)} runs", f"{live} live",
                 f"sort: {self.sort_header()} {'↓' if self.descending else '↑'}"]
        if self.group_by:
            groups = sum(isinstance(row, Group) for row in self.rows)
            parts.append(f"{groups} group{'s' * (groups != 1)} by {self.group_by}")
        if self.selected:
            parts.append(f"{len(self.selected)} selected")
        if self.app.store_error:
            parts.append("[red]store unreadable[/]")
        self.query_one("#summary", Static).update(" · ".join(parts))

    def sort_header(self) -> str:
        """The sort field as a column's header names it (``best R@1`` for e_recall@1), else the field itself."""
        for col in [*self.columns, *BUILTIN.values()]:
            if col.sort_field == self.sort_field:
                return col.header
        return self.sort_field

    def _tick(self) -> None:
        """Running runs' durations advance without any I/O."""
        now = self.app.now()
        for record in self.app.monitor.live():
            if record["state"] == "running" and "time" in self.table.column_order and self.table.is_loaded(record["id"]):
                self.table.update_cell(record["id"], "time", run_cells(record, [BUILTIN["time"]], now=now)["time"])

    def cursor_run_id(self) -> str | None:
        """The row key under the cursor: a run's id, or a group's (``group:...``)."""
        return self.table.cursor_row_key()

    def cursor_group(self) -> Group | None:
        key = self.cursor_run_id()
        return next((row for row in self.rows if isinstance(row, Group) and row.id == key), None) \
            if is_group_row(key) else None

    def cursor_record(self) -> dict[str, Any] | None:
        run_id = self.cursor_run_id()
        return self.app.run_record(run_id) if run_id and not is_group_row(run_id) else None

    # --------------------------------------------------------------------------- filter and sort
    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self.redraw()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.set_focus(self.table)

    def action_focus_filter(self) -> None:
        # Keys that arrive with the "/" (a query typed fast, over a slow link) must go into the box, not to the
        # table's bindings (s sorts, x stops a run). The app hands each key to the widget focused when it reads the
        # key, so "/" is a priority binding (acted on as it is read) and moves the focus at once (set_focus, not
        # focus()'s call_later); in a text box it is a character.
        if isinstance(self.focused, Input):
            raise SkipAction()
        self.set_focus(self.query_one("#filter", Input))
        self.warm_query_parser()

    @work(thread=True, group="query-parser", exclusive=True, exit_on_error=False)
    def warm_query_parser(self) -> None:
        """Import lark and build the query parser while the first characters are typed (about 0.1 s, once)."""
        from dmltui.query import parser

        parser()

    def action_clear(self) -> None:
        self.query_one("#filter", Input).value = ""
        self.selected.clear()
        self.set_focus(self.table)
        self.redraw(force=True)

    def action_sort(self) -> None:
        choices: dict[str, str] = {}
        for col in [*self.columns, *BUILTIN.values()]:
            if col.sort_field and col.sort_field not in choices:
                choices[col.sort_field] = col.header
        for metric in logged_metrics(self.app.monitor.runs()):
            choices.setdefault(metric, f"best {display_name(metric)}")
        self.app.push_screen(ChoiceScreen("Sort by", list(choices.items()), current=self.sort_field), self._sort_chosen)

    def _sort_chosen(self, field: str | None) -> None:
        if field:
            self.sort_by(field)

    def sort_by(self, field: str, *, descending: bool | None = None) -> None:
        if descending is None:
            descending = not self.descending if field == self.sort_field else field not in ("name", "preset", "dataset", "loss", "state")
        self.sort_field, self.descending = field, descending
        self.redraw()

    def action_flip_order(self) -> None:
        self.sort_by(self.sort_field, descending=not self.descending)

    @on(DataTable.HeaderSelected)
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        field = None if key == MARK else column(key).sort_field
        if field:
            self.sort_by(field)

    def action_pick_columns(self) -> None:
        from dmltui.fields import KnownFields
        from dmltui.tui.screens.columns import ColumnsScreen

        defaults = [c.key for c in table_columns(None, self.app.monitor.records.values())]
        runs = self.app.monitor.runs()
        self.app.push_screen(ColumnsScreen([c.key for c in self.columns], KnownFields(runs), defaults, changed_keys(runs)),
                             self._columns_chosen)

    def _columns_chosen(self, keys: list[str] | None) -> None:
        if keys is not None:
            self.set_columns(keys)

    def set_columns(self, keys: list[str] | None) -> None:
        """Show these columns (dmltui.columns keys; None: the default ones)."""
        defaults = [c.key for c in table_columns(None, self.app.monitor.records.values())]
        self.column_keys = None if keys is None or keys == defaults else list(keys)
        self.redraw()

    def action_group(self) -> None:
        choices = [("", "(no groups)"), ("preset", "preset"), ("name", "name without its seed"), ("dataset", "dataset"),
                   ("loss", "loss"), ("miner", "miner"), ("state", "state")]
        changed = changed_keys(self.app.monitor.runs())
        shown = [c.key for c in self.columns if c.key.startswith("config.")]
        choices += [(key, key) for key in dict.fromkeys([*shown, *(f"config.{key}" for key in changed)])]
        self.app.push_screen(ChoiceScreen("Group runs by", choices, current=self.group_by or ""), self._group_chosen)

    def _group_chosen(self, key: str | None) -> None:
        if key is not None:
            self.set_group_by(key or None)

    def set_group_by(self, key: str | None) -> None:
        """One row per group of the shown runs under *key* (None: no groups); groups start closed."""
        self.group_by, self.expanded = key, set()
        self.redraw()

    def action_annotate(self) -> None:
        from dmltui.tui.screens.annotate import AnnotateScreen

        records = [r for r in self.shown if r["id"] in self.selected] or [r for r in [self.cursor_record()] if r]
        if records:
            self.app.push_screen(AnnotateScreen(records))

    def current_view(self, name: str = "") -> View:
        """The table as it is now, as a view named *name*."""
        from dmltui.views import View

        return View(name=name, filter=self.query_one("#filter", Input).value, columns=tuple(self.column_keys or ()),
                    sort=self.sort_field, descending=self.descending, group_by=self.group_by)

    def action_views(self) -> None:
        from dmltui.tui.screens.views import ViewsScreen

        self.app.push_screen(ViewsScreen(self.current_view()), self._view_chosen)

    def _view_chosen(self, view: View | None) -> None:
        if view is not None:
            self.apply_view(view)

    def apply_view(self, view: View) -> None:
        """Show the runs as *view* says: its filter in the box, its columns (none: the default), sort and grouping."""
        self.column_keys = list(view.columns) or None
        self.sort_field, self.descending = view.sort, view.descending
        self.group_by, self.expanded = view.group_by, set()
        self.query_one("#filter", Input).value = view.filter
        self.redraw()
        self.sub_title = f"view {view.name}" if view.name else None  # (None: the app's)

    def action_tag_filter(self) -> None:
        tags = sorted({t for r in self.app.monitor.runs() for t in r.get("tags", [])})
        if not tags:
            self.notify("no run has a tag yet (add one with `dmltui runs tag`)")
            return
        self.app.push_screen(ChoiceScreen("Show runs tagged", [("", "(any tag)"), *((t, t) for t in tags)]), self._tag_chosen)

    def _tag_chosen(self, tag: str | None) -> None:
        if tag is None:
            return
        from dmltui.query import looks_like_query, quoted_glob

        box = self.query_one("#filter", Input)
        if looks_like_query(box.value):  # a query gains a condition ("any tag" leaves it as it is)
            if tag:
                box.value = f"{box.value} and tags has {quoted_glob(tag)}"
            return
        words = [w for w in box.value.split() if not w.startswith("tag:")]
        box.value = " ".join([*words, *([f"tag:{tag}"] if tag else [])])

    # --------------------------------------------------------------------------- selection and navigation
    def action_toggle_select(self) -> None:
        run_id = self.cursor_run_id()
        if run_id is None:
            return
        group = self.cursor_group()
        if group is not None:  # a group: all its runs, or none of them once all are selected
            ids = {run["id"] for run in group.runs}
            self.selected = self.selected - ids if ids <= self.selected else self.selected | ids
            self.table.action_cursor_down()
            self.redraw(force=True)
            return
        self.selected ^= {run_id}
        self.table.update_cell(run_id, MARK, run_cells(self.app.run_record(run_id), [], selected=run_id in self.selected)[MARK])
        self.table.action_cursor_down()
        self._update_summary()

    @on(DataTable.RowSelected, "#runs")
    def _row_chosen(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        """A run's screen; on a group row, open or close the group."""
        from dmltui.tui.screens.run import RunScreen

        run_id = self.cursor_run_id()
        if is_group_row(run_id):
            self.expanded ^= {run_id}
            self.redraw()
        elif run_id:
            self.app.push_screen(RunScreen(run_id))

    def action_studies(self) -> None:
        from dmltui.tui.screens.studies import open_studies

        open_studies(self.app)

    def action_new_run(self) -> None:
        from dmltui.tui.screens.new_run import NewRunScreen

        self.app.push_screen(NewRunScreen())

    def action_compare(self) -> None:
        from dmltui.tui.screens.compare import CompareScreen

        ids = [r["id"] for r in self.shown if r["id"] in self.selected] or [r["id"] for r in self.shown]
        if len(ids) < 2:
            self.notify("select two or more runs (space) to compare", severity="warning")
            return
        self.app.push_screen(CompareScreen(ids))

    # --------------------------------------------------------------------------- run operations
    def _confirmed(self, question: str, label: str, operation, *, danger: bool = False) -> None:
        record = self.cursor_record()
        if record is None:
            return
        self.app.push_screen(ConfirmScreen(question.format(**record), confirm_label=label, danger=danger),
                             lambda yes: yes and self.app.run_operation(operation, record))

    def action_stop(self) -> None:
        record = self.cursor_record()
        if record and record["state"] not in LIVE_STATES:
            self.notify(f"{record['name']} is {record['state']}; only queued or running runs can be stopped", severity="warning")
            return
        self._confirmed("Stop run {name} ({id})? It checkpoints and can be resumed.", "Stop", "stop")

    def action_resume(self) -> None:
        record = self.cursor_record()
        if record:
            self.app.run_operation("resume", record)

    def action_rerun(self) -> None:
        self._confirmed("Start a new run with the config of {name}?", "Rerun", "rerun")

    def action_delete(self) -> None:
        self._confirmed("Delete run {name} ({id}) and its run directory {run_dir}?", "Delete", "delete", danger=True)
