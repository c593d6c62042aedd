"""Saved views of the runs table (``dmltui.views``: a name for a filter, columns, a sort and a grouping, kept in the
user's config.toml): choose one, save the current table as one, or delete one."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from dmltui.views import View, ViewError, check_view_name, delete_view, load_views, save_view

DEFAULT = ""  # the option id of the table as it is with no view


def view_summary(view: View) -> Text:
    """One line saying what a view shows: ``margin-lr  filter … · group config.optim.lr · 5 columns · sort lr ↑``."""
    text = Text(view.name, style="bold")
    parts = []
    if view.filter:
        parts.append(f"filter {view.filter}")
    if view.group_by:
        parts.append(f"group {view.group_by}")
    if view.columns:
        parts.append(f"{len(view.columns)} columns")
    parts.append(f"sort {view.sort} {'↓' if view.descending else '↑'}")
    return text.append(f"  {' · '.join(parts)}", style="dim")


class ViewsScreen(ModalScreen[View | None]):
    """Dismisses with the chosen view (a View without a name: the default table), or None when closed."""

    BINDINGS = [
        Binding("escape", "close", "Close", priority=True),
        Binding("down", "move(1)", show=False, priority=True),
        Binding("up", "move(-1)", show=False, priority=True),
        Binding("ctrl+d", "delete", "Delete view", priority=True),
    ]

    def __init__(self, current: View):
        """*current*: the table as it is (its name unused), what "save" names."""
        super().__init__()
        self.current = current
        self.views: dict[str, View] = {}

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="views-dialog"):
            yield Label("Views: enter shows the highlighted one; a name and enter saves this table as a view; "
                        "ctrl+d deletes", classes="question")
            yield Input(placeholder="name to save the current table as (e.g. margin-lr-sweep)", id="view-name")
            yield Static(id="view-error")
            yield OptionList(id="view-options")

    def on_mount(self) -> None:
        self.set_focus(self.query_one("#view-name", Input))
        self._reload()

    def _reload(self) -> None:
        try:
            self.views = load_views()
        except ViewError as error:
            self.views = {}
            self._say(str(error))
        options = self.query_one("#view-options", OptionList)
        options.clear_options()
        options.add_option(Option(Text.assemble(("(default)", "bold"), ("  all runs, the default columns", "dim")),
                                  id=DEFAULT))
        options.add_options([Option(view_summary(view), id=f"view:{name}") for name, view in self.views.items()])
        options.highlighted = 0

    def _say(self, message: str) -> None:
        box = self.query_one("#view-error", Static)
        box.update(Text(message, style="red"))
        box.display = bool(message)

    def _highlighted(self) -> str | None:
        """The highlighted view's name, DEFAULT for the default table."""
        options = self.query_one("#view-options", OptionList)
        if options.highlighted is None:
            return None
        option_id = options.get_option_at_index(options.highlighted).id
        return option_id.removeprefix("view:")

    def action_move(self, step: int) -> None:
        options = self.query_one("#view-options", OptionList)
        if options.option_count:
            options.highlighted = ((options.highlighted or 0) + step) % options.option_count

    @on(Input.Submitted, "#view-name")
    def _submitted(self, event: Input.Submitted) -> None:
        name = event.value.strip()
        if not name:  # no name typed: show the highlighted view
            chosen = self._highlighted()
            if chosen is not None:
                self.dismiss(self.views.get(chosen) or View(name=DEFAULT))
            return
        try:
            check_view_name(name)
            save_view(View(name=name, filter=self.current.filter, columns=self.current.columns,
                           sort=self.current.sort, descending=self.current.descending, group_by=self.current.group_by))
        except (ViewError, ValueError, OSError) as error:
            self._say(str(error))
            return
        self.notify(f"saved view {name}")
        self.dismiss(None)

    def action_delete(self) -> None:
        chosen = self._highlighted()
        if not chosen:
            return
        try:
            delete_view(chosen)
        except (ViewError, OSError) as error:
            self._say(str(error))
            return
        self.notify(f"deleted view {chosen}")
        self._reload()

    def action_close(self) -> None:
        self.dismiss(None)
