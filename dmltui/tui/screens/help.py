"""The help screen: the keys of the screen it was opened from, the global keys and the filter syntax."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

GENERAL = """\
Runs are detached processes: quitting dmltui never stops them, and they survive a dropped SSH session.
Every action is also in the command palette (ctrl+p). The mouse works but is never needed.
Filter syntax on the runs screen: words must all appear in the id, name, preset, dataset, loss, miner, tags \
or notes; state:running (state:failed,crashed), tag:NAME, dataset:cub200 and preset:NAME narrow further.
A filter that starts with FIELD OPERATOR, not or ( is a query, as `runs list --where` takes: run fields (state, \
name, tags...), config.KEY, best.SPLIT.METRIC and last.SPLIT.METRIC; = != < <= > >= ~ (glob) in (a, b) has; and, \
or, not, parentheses. For example: state = finished and best.test.e_recall@1 >= 0.6 and config.optim.lr < 1e-4"""


def keys_table(screen: Screen, app_bindings: list[Binding]) -> Table:
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    table.add_column("key", no_wrap=True, style="bold cyan")
    table.add_column("action")
    seen = set()
    for binding in [*screen.BINDINGS, *app_bindings]:
        if not isinstance(binding, Binding) or not binding.description or binding.action in seen:
            continue
        seen.add(binding.action)
        key = binding.key_display or binding.key.replace("question_mark", "?").replace("slash", "/")
        table.add_row(key, binding.tooltip or binding.description)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, screen: Screen):
        super().__init__()
        self.for_screen = screen

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog help"):
            yield Static(f"[b]{type(self.for_screen).__name__.removesuffix('Screen')} screen keys[/b]")
            yield Static(keys_table(self.for_screen, self.app.BINDINGS))
            yield Static(GENERAL, classes="general")
            yield Static("[dim]escape closes this help[/dim]")
