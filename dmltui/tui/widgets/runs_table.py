"""The runs table: thousands of runs without a pause.

A DataTable measures every cell of every row it is given (about 0.13 ms a row: 1.3 s for 10,000 runs), so
this table adds long lists in chunks: the first screenful at once, the rest a chunk at a time, the app
answering keys and refreshing the screen in between. A new order of the same rows (a sort) moves the rows instead of re-adding
them, and a changed run updates only its own cells.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual._two_way_dict import TwoWayDict
from textual.widgets import DataTable

from dmltui.columns import Column
from dmltui.tui.format import MARK
from dmltui.workspace import row_id

CHUNK_PAUSE = 0.01  # seconds between chunks: keys typed meanwhile are answered before the next chunk
Cells = Callable[[Any], dict[str, Any]]  # a row (a run's record or a group) -> its cells by column key


class RunsTable(DataTable):
    FIRST_ROWS = 100  # more than a screenful on any terminal: what the first paint waits for
    CHUNK_ROWS = 400  # about 50 ms of measuring per refresh

    def __init__(self, columns: list[Column], **kwargs: Any):
        self._order_version = 0  # (before DataTable's own __init__, which already asks for the row order)
        self._order_cache: tuple[tuple[int, int], list[Any], list[tuple[Any, int]]] | None = None
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.records: list[dict[str, Any]] = []  # what the table shows, in order; the first `loaded` are rows by now
        self.loaded = 0
        self._cells: Cells = lambda record: {}
        self._cursor_wanted: str | None = None
        self._generation = 0  # of the list being loaded: a rebuild stops the chunks of the one before
        self.column_order: list[str] = []
        self._widths: list[int | None] = []
        self.set_columns(columns)

    def set_columns(self, columns: list[Column]) -> None:
        """Show the selection mark, then these columns in this order; a change empties the table (the next show
        rebuilds it)."""
        keys = [MARK, *(c.key for c in columns)]
        widths = [c.width for c in columns]
        if keys == self.column_order and widths == self._widths:
            return
        self._widths = widths
        self.clear(columns=True)
        self.add_column(" ", key=MARK, width=1)
        for col in columns:
            self.add_column(col.header, key=col.key, width=col.width)
        self.column_order = keys
        self.records, self.loaded = [], 0

    @property
    def pending(self) -> bool:
        """Whether rows are still to be added (Widget.loading is Textual's loading indicator: another thing)."""
        return self.loaded < len(self.records)

    def show(self, records: list[dict[str, Any]], cells: Cells, *, force: bool = False, cursor: str | None = None) -> None:
        """Show *records* in this order. A record object that was shown before is taken as unchanged unless *force*
        (the monitor replaces a run's record when it changes); *cursor* is the run id to keep the cursor on."""
        previous = self.records
        self._cells = cells
        if [row_id(r) for r in previous] == [row_id(r) for r in records]:  # rows still to load will use the new records
            self._update_changed(previous[:self.loaded], records[:self.loaded], force)
        elif not self.pending and len(previous) == len(records) and {row_id(r) for r in previous} == {row_id(r) for r in records}:
            self._update_changed(previous, records, force)
            self._reorder([row_id(r) for r in records])
        else:
            self.records = records
            self._rebuild(cursor)
            return
        self.records = records

    # DataTable keeps the on-screen row order and the line offsets per *update count*, which every update_cell
    # raises: with 10,000 rows, each live run's time ticking every second rebuilt both lists (15 ms a frame).
    # Here they are kept until rows are added, removed, cleared or reordered. Every row is one line high.
    def _order_changed(self) -> None:
        self._order_version += 1

    def _order(self) -> tuple[list[Any], list[tuple[Any, int]]]:
        key = (self.row_count, self._order_version)
        if self._order_cache is None or self._order_cache[0] != key:
            rows = [self.rows[self._row_locations.get_key(index)] for index in range(self.row_count)]
            self._order_cache = (key, rows, [(row.key, 0) for row in rows])
        return self._order_cache[1], self._order_cache[2]

    @property
    def ordered_rows(self) -> list[Any]:
        return self._order()[0]

    @property
    def _y_offsets(self) -> list[tuple[Any, int]]:
        return self._order()[1]

    def add_row(self, *cells: Any, **kwargs: Any) -> Any:
        self._order_changed()
        return super().add_row(*cells, **kwargs)

    def remove_row(self, row_key: Any) -> None:
        self._order_changed()
        super().remove_row(row_key)

    def clear(self, columns: bool = False) -> RunsTable:
        self._order_changed()
        self._order_cache = ((self.row_count, self._order_version), [], [])  # DataTable.clear asks for the old order
        return super().clear(columns)

    def sort(self, *columns: Any, key: Any = None, reverse: bool = False) -> RunsTable:
        self._order_changed()
        return super().sort(*columns, key=key, reverse=reverse)

    def is_loaded(self, run_id: str) -> bool:
        return run_id in self.rows

    def _update_changed(self, previous: list[dict[str, Any]], records: list[dict[str, Any]], force: bool) -> None:
        shown = {row_id(r): r for r in previous}
        for record in records:
            key = row_id(record)
            if shown.get(key) is record and not force:
                continue
            cells = self._cells(record)
            for column in self.column_order:
                value = cells[column]
                if str(self.get_cell(key, column)) != str(value):  # a column sized to its content grows with it
                    self.update_cell(key, column, value, update_width=self.columns[column].auto_width)

    def _reorder(self, keys: list[str]) -> None:
        """Rows in a new order, without re-adding (and re-measuring) them: what DataTable.sort does, with the order
        given instead of a key on cell values (the order is the listing's, sort_runs)."""
        cursor = self.cursor_row_key()
        by_value = {key.value: key for key in self.rows}
        self._row_locations = TwoWayDict({by_value[key]: index for index, key in enumerate(keys)})
        self._order_changed()
        self._update_count += 1
        self.refresh()
        if cursor is not None:
            self.move_cursor(row=self.get_row_index(cursor), animate=False)

    def _rebuild(self, cursor: str | None) -> None:
        self.clear()
        self.loaded = 0
        self._generation += 1
        self._cursor_wanted = cursor
        self._add(self.FIRST_ROWS)
        if self.pending:
            self.set_timer(CHUNK_PAUSE, lambda generation=self._generation: self._load_more(generation))

    def _load_more(self, generation: int) -> None:
        if generation != self._generation or not self.pending:
            return
        self._add(self.CHUNK_ROWS)
        if self.pending:
            self.set_timer(CHUNK_PAUSE, lambda: self._load_more(generation))

    def _add(self, count: int) -> None:
        batch = self.records[self.loaded:self.loaded + count]
        for record in batch:
            cells = self._cells(record)
            self.add_row(*(cells[key] for key in self.column_order), key=row_id(record))
        self.loaded += len(batch)
        if self._cursor_wanted is not None and self._cursor_wanted in self.rows:
            self.move_cursor(row=self.get_row_index(self._cursor_wanted), animate=False)
            self._cursor_wanted = None

    def cursor_row_key(self) -> str | None:
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value
