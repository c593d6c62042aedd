"""The compare screen's Parallel and Differences tabs (dmltui/tui/screens/compare.py).

Parallel: ``dmltui plot parallel``'s chart of the compared runs (``dmltui.tui.compare_view.ParallelChart``), as text
(plotext) and, where the terminal shows real images, as a picture drawn in a worker; ``r`` sets a range on an axis
(:class:`RangeScreen`). Differences: what two runs on one dataset retrieve differently
(``dmltui inspect A --against B``): a worker embeds both runs' test split with their best checkpoints (as the run
screen's Retrieval tab does, in a child process) and the tab lists the queries one run gets right at rank 1 and the
other wrong, or recall@1 per class (``v``); enter on a query shows its neighbours in both runs side by side. How
these read is ``dmltui.tui.compare_view`` and ``dmltui.tui.differences_view``; here they are only placed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, ContentSwitcher, DataTable, Input, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from dmltui.axis_ranges import BadRange
from dmltui.sweep_views import Parallel, parallel_text
from dmltui.tui.compare_view import ParallelChart, parallel_chart, parallel_picture, shows_images
from dmltui.tui.differences_view import (
    CHECKPOINT,
    SIDES,
    SPLIT,
    class_rows,
    counts_text,
    differences_refusal,
    query_rows,
    side_names,
    side_text,
)
from dmltui.tui.retrieval_view import MARKS, caption, progress_text
from dmltui.tui.widgets.retrieval import CELL_WIDTH, ImageCell, image_widget_class

# --------------------------------------------------------------------------- Parallel


class ParallelText(Widget):
    """The chart drawn with plotext at the widget's size (redrawn when it changes)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.data: Parallel | None = None
        self._drawn: tuple[int, int, int, Text] | None = None  # (id of data, width, height, text)

    def show(self, data: Parallel | None) -> None:
        self.data = data
        self._drawn = None
        self.refresh()

    def render(self) -> Text:
        if self.data is None:
            return Text("")
        if not self.data.runs:
            return Text("no run lies within the ranges (r: change them)", style="yellow")
        width, height = self.size
        if width < 20 or height < 6:
            return Text("")
        if self._drawn is None or self._drawn[:3] != (id(self.data), width, height):
            self._drawn = (id(self.data), width, height, Text.from_ansi(parallel_text(self.data, width, height)))
        return self._drawn[3]


class ParallelPanel(Vertical):
    """The runs' parallel coordinates under the screen's metric and selection, narrowed by ranges on the axes."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.chart: ParallelChart | None = None
        self.reason: str | None = None

    def compose(self) -> ComposeResult:
        yield ParallelText(id="parallel-text")
        yield image_widget_class()(id="parallel-image")
        yield Static(id="parallel-status")

    def on_mount(self) -> None:
        self.query_one("#parallel-image").display = False

    def show(self, records: list[dict[str, Any]], metric: str, split: str, selection: str) -> None:
        """The chart of *records*; the ranges set so far stay where they still read on the axes."""
        chart = parallel_chart(records, metric, split, selection, self.chart.ranges if self.chart else None)
        if isinstance(chart, str):
            self.chart, self.reason = None, chart
        else:
            self.chart, self.reason = chart, None
        self._draw()

    def set_chart(self, chart: ParallelChart) -> None:
        """The same chart with other ranges (from :class:`RangeScreen`)."""
        self.chart, self.reason = chart, None
        self._draw()

    def _draw(self) -> None:
        status = self.query_one("#parallel-status", Static)
        text = self.query_one(ParallelText)
        if self.chart is None:
            text.show(None)
            self.query_one("#parallel-image").display = False
            text.display = True
            status.update(Text(f"no chart: {self.reason}", style="yellow"))
            return
        shown = self.chart.shown()
        text.show(shown)
        status.update(self.chart.status())
        if shows_images() and shown.runs:
            self.draw_picture(shown)
        else:
            self.query_one("#parallel-image").display = False
            text.display = True

    @work(thread=True, exclusive=True, group="parallel-picture", exit_on_error=False)
    def draw_picture(self, data: Parallel) -> None:
        try:
            picture = parallel_picture(data)
        except Exception:  # noqa: BLE001 - no picture: the text chart stays
            return
        self.app.call_from_thread(self._picture_done, data, picture)

    def _picture_done(self, data: Parallel, picture) -> None:
        if not self.is_attached or self.chart is None or self.query_one(ParallelText).data is not data:
            return  # the chart changed meanwhile: its own picture comes
        image = self.query_one("#parallel-image")
        image.image = picture
        image.display = True
        self.query_one(ParallelText).display = False


class RangeScreen(ModalScreen[ParallelChart | None]):
    """Pick an axis, type LOW:HIGH (empty: no range there); returns the chart with that range, or None. A range that
    does not read on the axis is said here, and nothing changes."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, chart: ParallelChart):
        super().__init__()
        self.chart = chart
        self.choices = chart.axis_choices()

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog range"):
            yield Label("A range on an axis: only the runs within every range are drawn", classes="question")
            yield OptionList(*(Option(label) for _, label in self.choices), id="range-axes")
            yield Label("LOW:HIGH (a value alone, or one side empty; empty clears the range), enter sets it:")
            yield Input(placeholder="LOW:HIGH", id="range-bounds")
            yield Static("", id="range-error")
            with Horizontal(classes="buttons"):
                yield Button("Set", id="set", variant="primary")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        axes = self.query_one(OptionList)
        self.set_focus(axes)
        axes.highlighted = 0

    @on(OptionList.OptionSelected, "#range-axes")
    def _axis_chosen(self) -> None:
        self.set_focus(self.query_one("#range-bounds", Input))  # at once: the keys typed next go to the input

    @on(Input.Submitted, "#range-bounds")
    def _submitted(self) -> None:
        self._apply()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "set":
            self._apply()
        else:
            self.dismiss(None)

    def _apply(self) -> None:
        index = self.query_one(OptionList).highlighted
        key = self.choices[index or 0][0]
        try:
            chart = self.chart.with_range(key, self.query_one("#range-bounds", Input).value)
        except BadRange as error:
            self.query_one("#range-error", Static).update(Text(str(error), style="red"))
            return
        self.dismiss(chart)

    def action_cancel(self) -> None:
        self.dismiss(None)


# --------------------------------------------------------------------------- Differences


def neighbours_text(query: dict[str, Any], side: str) -> Text:
    """A run's neighbours of *query* as text, nearest first: ``1 ✓ 0.123 class`` (a line each: app.tcss cuts, not
    wraps, them)."""
    text = Text(f"Q {query['class']}\n", style="bold")
    for rank, neighbour in enumerate(query[side.lower()]["neighbours"], start=1):
        mark, colour = MARKS[neighbour["correct"]]
        text.append(f"{rank:>2} ")
        text.append(mark, style=colour)
        text.append(f" {neighbour['distance']:.3f} {neighbour['class']}\n")
    return text


class DiffSide(Vertical):
    """One run's neighbours of the chosen query: a header, then images (where the terminal shows them) or text."""

    def __init__(self, side: str, images: bool, **kwargs: Any):
        super().__init__(classes="diff-side", **kwargs)
        self.side = side
        self.images = images

    def compose(self) -> ComposeResult:
        yield Static(classes="diff-side-header")
        with VerticalScroll(classes="diff-side-body"):
            if self.images:
                yield Grid(classes="diff-grid")
            else:
                yield Static(classes="diff-side-text")

    async def prepare(self, k: int) -> None:
        if self.images:
            grid = self.query_one(".diff-grid", Grid)
            await grid.remove_children()
            await grid.mount_all([ImageCell() for _ in range(k + 1)])
            self.fit()

    def show(self, query: dict[str, Any], name: str) -> None:
        self.query_one(".diff-side-header", Static).update(side_text(query, self.side, name))
        if not self.images:
            self.query_one(".diff-side-text", Static).update(neighbours_text(query, self.side))
            return
        cells = list(self.query(ImageCell))
        width = CELL_WIDTH - 1
        shown = query[self.side.lower()]
        cells[0].show(query["path"], caption(None, {**query, "ap": shown["ap"]}, width), None)
        for cell, neighbour in zip(cells[1:], shown["neighbours"], strict=True):
            cell.show(neighbour["path"], caption(neighbour, query, width), neighbour["correct"])

    def on_resize(self) -> None:
        self.fit()

    def fit(self) -> None:
        if self.images:
            width = self.query_one(".diff-side-body").scrollable_content_region.width
            self.query_one(".diff-grid", Grid).styles.grid_size_columns = max(1, width // CELL_WIDTH) if width else 2


class DifferencesPanel(Vertical):
    """Computes on :meth:`open` (the first time the tab shows) and keeps its result while the screen lives."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.opened = False
        self.names: tuple[str, str] = ("A", "B")
        self.diff = None
        self.view = "queries"
        self.current: int | None = None
        self.child = None  # the embedding child process, while one runs
        self.images = shows_images()

    def compose(self) -> ComposeResult:
        yield Static("", id="diff-status")
        yield ProgressBar(id="diff-progress", show_eta=False)
        with ContentSwitcher(initial="diff-queries", id="diff-views"):
            with Horizontal(id="diff-queries"):
                yield DataTable(id="diff-table", cursor_type="row", zebra_stripes=True)
                with Horizontal(id="diff-sides"):
                    for side in SIDES:
                        yield DiffSide(side, self.images, id=f"diff-side-{side.lower()}")
            yield DataTable(id="diff-classes", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#diff-progress").display = False
        self.query_one("#diff-sides").display = False
        table = self.query_one("#diff-table", DataTable)
        for label, key, width in (("row", "row", 5), ("class", "class", 10), ("right", "right", 5),
                                  ("A top k", "a", 10), ("B top k", "b", 10)):
            table.add_column(label, key=key, width=width)
        classes = self.query_one("#diff-classes", DataTable)
        for label, key in (("A − B", "difference"), ("A R@1", "a"), ("B R@1", "b"), ("size", "size"),
                           ("class (largest difference first)", "class")):
            classes.add_column(label, key=key)

    def focus_target(self) -> DataTable:
        return self.query_one("#diff-classes" if self.view == "classes" else "#diff-table", DataTable)

    # ----------------------------------------------------------------------------- loading
    def open(self, records: list[dict[str, Any]]) -> None:
        """Start computing, once (again only after a failure); or say why these runs get no comparison."""
        if self.opened:
            return
        self.opened = True
        status = self.query_one("#diff-status", Static)
        refusal = differences_refusal(records)
        if refusal is not None:
            status.update(Text(refusal, style="yellow"))
            self.query_one("#diff-views").display = False
            return
        self.names = side_names(records)
        status.update("reading the cached embeddings…")
        self.compute([Path(r["run_dir"]) for r in records])

    @work(thread=True, exclusive=True, group="differences", exit_on_error=False)
    def compute(self, run_dirs: list[Path]) -> None:
        """Embed each run in a child process when its cache is not valid, then search and compare here."""
        from dmltui.inspect import embed_in_child, inspect_run
        from dmltui.retrieval_diff import RetrievalDiff

        found = []
        try:
            for side, name, run_dir in zip(SIDES, self.names, run_dirs, strict=True):
                def progress(done: int, total: int, side=side, name=name) -> None:
                    self.app.call_from_thread(self._progress, f"{side} {name}", done, total)

                embed_in_child(run_dir, split=SPLIT, checkpoint=CHECKPOINT, progress=progress, started=self._started)
                self.child = None
                found.append(inspect_run(run_dir, split=SPLIT, checkpoint=CHECKPOINT))
            diff = RetrievalDiff(*found)
        except Exception as error:  # noqa: BLE001 - DifferentImages, EmbedError (no checkpoint, no dataset): one line
            self.app.call_from_thread(self._failed, str(error).splitlines()[0] if str(error) else repr(error))
            return
        finally:
            self.child = None
        self.app.call_from_thread(self.show, diff)

    def _started(self, child) -> None:
        self.child = child

    def on_unmount(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()  # leaving the screen: the half-done embedding is not worth finishing

    def _progress(self, who: str, done: int, total: int) -> None:
        if not self.is_attached:
            return
        bar = self.query_one("#diff-progress", ProgressBar)
        bar.display = True
        bar.update(total=total, progress=done)
        self.query_one("#diff-status", Static).update(f"{who}: {progress_text(done, total, SPLIT, CHECKPOINT)}")

    def _failed(self, message: str) -> None:
        if not self.is_attached:
            return
        self.opened = False  # the next visit of the tab tries again
        self.query_one("#diff-progress").display = False
        self.query_one("#diff-status", Static).update(Text(f"cannot compare these runs: {message}", style="red"))

    # ----------------------------------------------------------------------------- showing
    async def show(self, diff) -> None:
        if not self.is_attached:
            return
        self.query_one("#diff-progress").display = False
        for side in self.query(DiffSide):
            await side.prepare(diff.a.results.k)
        table = self.query_one("#diff-table", DataTable)
        for row in query_rows(diff):
            table.add_row(*row.cells, key=row.key)
        classes = self.query_one("#diff-classes", DataTable)
        for cells in class_rows(diff):
            classes.add_row(*cells)
        self.diff = diff  # set last: with it, the tab is filled
        self._update_status()

    def _update_status(self) -> None:
        text = counts_text(self.diff, self.names, self.view)
        if self.view == "queries" and self.current is None:
            text.append(" · enter: a query in both runs", style="dim")
        self.query_one("#diff-status", Static).update(text)

    @on(DataTable.RowSelected, "#diff-table")
    def _chosen(self, event: DataTable.RowSelected) -> None:
        if self.diff is not None and event.row_key.value is not None:
            self.show_query(int(event.row_key.value))

    def show_query(self, row: int) -> None:
        """The query's neighbours in both runs, side by side."""
        query = self.diff.query(row)
        first = self.current is None
        self.current = row
        self.query_one("#diff-sides").display = True
        for side, name in zip(self.query(DiffSide), self.names, strict=True):
            side.show(query, name)
        if first:
            self._update_status()

    def action_view(self) -> None:
        self.view = "classes" if self.view == "queries" else "queries"
        self.query_one(ContentSwitcher).current = f"diff-{self.view}"
        self.screen.set_focus(self.focus_target())  # at once: keys pressed next go to the table shown
        if self.diff is not None:
            self._update_status()
