"""The run screen's Retrieval tab: the worst queries, a chosen query's neighbours as images, classes and confusions.

A worker thread computes (:func:`dmltui.inspect.inspect_run`, whose embeddings are cached in
the run directory); while it embeds, a progress bar shows how far it is and the screen stays
usable. Images render through textual-image: kitty graphics or sixel where the terminal has
them, half-cell blocks elsewhere (``$DMLTUI_IMAGES=halfcell`` forces those).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.widgets import ContentSwitcher, DataTable, ProgressBar, Static

from dmltui.tui.retrieval_view import (
    caption,
    class_rows,
    image_mode,
    next_order,
    pair_rows,
    progress_text,
    query_rows,
    summary_text,
)

SPLIT, CHECKPOINT = "test", "best"  # what the tab inspects: the split and checkpoint `dmltui inspect` defaults to
CELL_WIDTH = 11  # columns per image cell of the neighbours grid (9 for the image, a margin)
THUMBNAIL = 128  # pixels: images are shrunk once before they are handed to the renderer


class NoImage(Static):
    """In place of an image where textual-image cannot start (its terminal probe fails where the terminal reports
    a size of 0 columns, e.g. a pseudo-terminal nobody sized): the caption still names the image."""

    def __init__(self, **kwargs: Any):
        super().__init__("(no image: the terminal reports no size)", **kwargs)

    @property
    def image(self) -> None:
        return None

    @image.setter
    def image(self, picture: Any) -> None:
        pass


def image_widget_class():
    try:
        from textual_image.widget import HalfcellImage, Image
    except Exception:  # textual-image raises ZeroDivisionError, not an ImportError, from that probe
        return NoImage
    return HalfcellImage if image_mode() == "halfcell" else Image


def thumbnail(path: str):
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        return image


class ImageCell(Vertical):
    """One image of the neighbours grid with its two-line caption."""

    def __init__(self, **kwargs: Any):
        super().__init__(classes="retrieval-cell", **kwargs)

    def compose(self) -> ComposeResult:
        yield image_widget_class()(classes="retrieval-image")
        yield Static(classes="retrieval-caption")

    def show(self, path: str, text: Text, correct: bool | None) -> None:
        try:
            picture = thumbnail(path)
        except OSError:
            picture = None  # a moved or unreadable image: the caption still tells
        self.query_one(".retrieval-image").image = picture
        self.query_one(".retrieval-caption", Static).update(text)
        self.set_class(correct is True, "-correct")
        self.set_class(correct is False, "-wrong")


class RetrievalPanel(Vertical):
    """Loads on :meth:`open` (the first time the tab shows) and keeps its result while the screen lives."""

    BINDINGS = [
        Binding("o", "order", "Order", tooltip="Retrieval: order the worst queries by AP, first-hit rank or class"),
        Binding("v", "view", "Classes", tooltip="Retrieval: switch between the queries and the per-class tables"),
    ]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.run_dir: Path | None = None
        self.inspection = None
        self.order = "ap"
        self.view = "queries"
        self.current: dict[str, Any] | None = None
        self.child = None  # the embedding child process, while one runs

    def compose(self) -> ComposeResult:
        yield Static("", id="retrieval-status")
        yield ProgressBar(id="retrieval-progress", show_eta=False)
        with ContentSwitcher(initial="retrieval-queries", id="retrieval-views"):
            with Horizontal(id="retrieval-queries"):
                yield DataTable(id="retrieval-table", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(id="retrieval-gallery"):
                    yield Grid(id="retrieval-grid")
            with Horizontal(id="retrieval-classes"):
                yield DataTable(id="retrieval-class-table", cursor_type="row", zebra_stripes=True)
                yield DataTable(id="retrieval-pairs", cursor_type="row")

    def on_mount(self) -> None:
        self.preload()
        self.query_one("#retrieval-progress").display = False
        table = self.query_one("#retrieval-table", DataTable)
        for label, key, width in (("row", "row", 5), ("class", "class", 10), ("AP", "ap", 4), ("hit", "hit", 4),
                                  ("top k", "marks", 10)):
            table.add_column(label, key=key, width=width)
        classes = self.query_one("#retrieval-class-table", DataTable)
        for label, key in (("R@1", "recall"), ("size", "size"), ("class (lowest R@1 first)", "class")):
            classes.add_column(label, key=key)
        pairs = self.query_one("#retrieval-pairs", DataTable)
        pairs.add_column("count", key="count")
        pairs.add_column("most confused pairs", key="pair")

    # ----------------------------------------------------------------------------- loading
    @work(thread=True, group="retrieval-preload", exit_on_error=False)
    def preload(self) -> None:
        """Import torch and the metrics while the user looks at the other tabs: the tab then opens within a second
        on cached embeddings (the UI itself never imports torch)."""
        import dmltui.inspect  # noqa: F401

    def open(self, run_dir: str | Path) -> None:
        """Start computing, once (again only after a failure)."""
        if self.run_dir is not None:
            return
        self.run_dir = Path(run_dir)
        self.query_one("#retrieval-status", Static).update("reading the cached embeddings…")
        self.compute(self.run_dir)

    @work(thread=True, exclusive=True, group="retrieval", exit_on_error=False)
    def compute(self, run_dir: Path) -> None:
        """Embed in a child process when the cache is not valid (the interpreter stays free for the screen), then
        search here."""
        from dmltui.inspect import embed_in_child, inspect_run

        def progress(done: int, total: int) -> None:
            self.app.call_from_thread(self._progress, done, total)

        def started(child) -> None:
            self.child = child

        try:
            embed_in_child(run_dir, split=SPLIT, checkpoint=CHECKPOINT, progress=progress, started=started)
            found = inspect_run(run_dir, split=SPLIT, checkpoint=CHECKPOINT)
        except Exception as error:  # noqa: BLE001 - no checkpoint yet, a missing dataset: say it on the tab
            self.app.call_from_thread(self._failed, str(error))
            return
        finally:
            self.child = None
        self.app.call_from_thread(self.show, found)

    def on_unmount(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()  # leaving the run: the half-done embedding is not worth finishing

    def _progress(self, done: int, total: int) -> None:
        if not self.is_attached:
            return
        bar = self.query_one("#retrieval-progress", ProgressBar)
        bar.display = True
        bar.update(total=total, progress=done)
        self.query_one("#retrieval-status", Static).update(progress_text(done, total, SPLIT, CHECKPOINT))

    def _failed(self, message: str) -> None:
        if not self.is_attached:
            return
        self.run_dir = None  # the next visit of the tab tries again
        self.query_one("#retrieval-progress").display = False
        self.query_one("#retrieval-status", Static).update(Text(f"cannot inspect this run: {message}", style="red"))

    # ----------------------------------------------------------------------------- showing
    async def show(self, inspection) -> None:
        if not self.is_attached:
            return
        self.inspection = inspection
        self.query_one("#retrieval-progress").display = False
        grid = self.query_one("#retrieval-grid", Grid)
        await grid.remove_children()
        await grid.mount_all([ImageCell() for _ in range(inspection.results.k + 1)])  # composed before they show
        self._fit_grid()
        classes = self.query_one("#retrieval-class-table", DataTable)
        for cells in class_rows(inspection):
            classes.add_row(*cells)
        pairs = self.query_one("#retrieval-pairs", DataTable)
        for cells in pair_rows(inspection):
            pairs.add_row(*cells)
        self._fill_queries()

    def _fill_queries(self) -> None:
        table = self.query_one("#retrieval-table", DataTable)
        table.clear()
        for row in query_rows(self.inspection, self.order):
            table.add_row(*row.cells, key=row.key)
        self._update_status()
        if table.row_count:  # clear() put the cursor on the first row
            self.show_query(int(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value))

    def _update_status(self) -> None:
        self.query_one("#retrieval-status", Static).update(summary_text(self.inspection, self.order, self.view))

    @on(DataTable.RowHighlighted, "#retrieval-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.inspection is not None and event.row_key.value is not None:
            self.show_query(int(event.row_key.value))

    def show_query(self, row: int) -> None:
        """The query's image and its k neighbours, each marked correct or wrong, with its distance."""
        if self.current is not None and self.current["row"] == row:
            return
        query = self.current = self.inspection.query(row)
        cells = list(self.query_one("#retrieval-grid").query(ImageCell))
        width = CELL_WIDTH - 1
        cells[0].show(query["path"], caption(None, query, width), None)
        for cell, neighbour in zip(cells[1:], query["neighbours"], strict=True):
            cell.show(neighbour["path"], caption(neighbour, query, width), neighbour["correct"])

    def on_resize(self) -> None:
        self._fit_grid()

    def _fit_grid(self) -> None:
        gallery = self.query_one("#retrieval-gallery")
        width = gallery.scrollable_content_region.width
        columns = max(1, width // CELL_WIDTH) if width else 3
        self.query_one("#retrieval-grid", Grid).styles.grid_size_columns = columns

    # ----------------------------------------------------------------------------- actions
    def action_order(self) -> None:
        if self.inspection is None:
            return
        self.order = next_order(self.order)
        self.current = None
        self._fill_queries()

    def action_view(self) -> None:
        self.view = "classes" if self.view == "queries" else "queries"
        self.query_one(ContentSwitcher).current = f"retrieval-{self.view}"
        self.screen.set_focus(self.query_one("#retrieval-class-table" if self.view == "classes" else "#retrieval-table"))
        if self.inspection is not None:
            self._update_status()
