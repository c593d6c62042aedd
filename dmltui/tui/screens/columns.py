"""The runs table's column picker: every built-in column and every field the stored runs have (run fields, config
keys, best and last metrics), found by typing; enter adds or removes the highlighted one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.fuzzy import Matcher
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from dmltui.columns import BUILTIN, field_header
from dmltui.fields import METRIC_PREFIXES, RUN_FIELDS

SHOWN_LIMIT = 200  # options listed at once: thousands of config keys would only slow the typing


def candidates(fields: Iterable[str], changed: Iterable[str] = ()) -> list[str]:
    """Column keys to offer, in the order a search ranks equal matches: the built-in columns, the run fields, the
    config keys that some run set (*changed*: what a sweep varies, so ``lr`` finds ``config.optim.lr`` before
    ``config.loss.arcface.lr``), the metrics, then every other config key."""
    fields = list(fields)
    changed_keys = [f"config.{key}" for key in changed]
    config = [f for f in fields if f.startswith("config.")]
    metrics = [f for f in fields if f.split(".", 1)[0] in METRIC_PREFIXES]
    return list(dict.fromkeys([*BUILTIN, *RUN_FIELDS, *changed_keys, *metrics, *config]))


def matching(keys: Sequence[str], search: str) -> list[str]:
    """*keys* that *search* matches, best first: a whole part of the key (``lr`` finds ``config.optim.lr`` first),
    then the start of a part, then anywhere in it, then fuzzily (as Textual's command palette matches); within
    each, in the order of *keys* (see candidates). All of them without a search."""
    search = search.strip().lower()
    if not search:
        return list(keys)
    matcher = Matcher(search)

    def rank(key: str) -> int | None:
        lowered = key.lower()
        parts = lowered.replace("/", ".").split(".")
        if search in parts or search == lowered:
            return 0
        if any(part.startswith(search) for part in parts):
            return 1
        if search in lowered:
            return 2
        return 3 if matcher.match(key) > 0 else None

    ranked = [(r, index, key) for index, key in enumerate(keys) if (r := rank(key)) is not None]
    return [key for *_, key in sorted(ranked)]


def insert_column(shown: Sequence[str], key: str) -> list[str]:
    """*shown* with *key* added where an 80-column terminal still shows it: after the columns added before it, else
    after best R@1 (else the name), ahead of the default columns that matter less (dataset, preset, times)."""
    keys = list(shown)
    added = [i for i, k in enumerate(keys) if k not in BUILTIN]
    anchor = added[-1] if added else next((keys.index(k) for k in ("R@1", "name") if k in keys), len(keys) - 1)
    return [*keys[:anchor + 1], key, *keys[anchor + 1:]]


class ColumnsScreen(ModalScreen[list[str] | None]):
    """Returns the new column keys in order on escape or ctrl+s (see insert_column), None when nothing changed."""

    BINDINGS = [
        Binding("escape,ctrl+s", "done", "Done", priority=True),
        Binding("down", "move(1)", show=False, priority=True),
        Binding("up", "move(-1)", show=False, priority=True),
        Binding("ctrl+r", "defaults", "Defaults", tooltip="Back to the default columns"),
    ]

    def __init__(self, shown: Sequence[str], fields: Iterable[str], defaults: Sequence[str], changed: Iterable[str] = ()):
        super().__init__()
        self.original = list(shown)
        self.shown = list(shown)
        self.defaults = list(defaults)
        self.keys = candidates(fields, changed)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="columns-dialog"):
            yield Label("Columns: type to find one, enter adds or removes it, escape is done", classes="question")
            yield Input(placeholder="search: lr, loss, recall, seed…", id="column-search")
            yield OptionList(id="column-options")

    def on_mount(self) -> None:
        self.set_focus(self.query_one("#column-search", Input))
        self._list("")

    def _list(self, search: str, highlight: str | None = None) -> None:
        options = self.query_one("#column-options", OptionList)
        found = matching(self.keys, search)[:SHOWN_LIMIT]
        options.clear_options()
        options.add_options([self._option(key) for key in found])
        if found:
            options.highlighted = found.index(highlight) if highlight in found else 0

    def _option(self, key: str) -> Option:
        label = Text("✓ " if key in self.shown else "  ", style="bold green")
        label.append(key)
        header = BUILTIN[key].header if key in BUILTIN else field_header(key)
        if header != key and not key.endswith(header):  # (config.optim.lr's header optim.lr says nothing more)
            label.append(f"  {header}", style="dim")
        return Option(label, id=key)

    @on(Input.Changed, "#column-search")
    def _searched(self, event: Input.Changed) -> None:
        self._list(event.value)

    @on(Input.Submitted, "#column-search")
    def _toggle(self) -> None:
        options = self.query_one("#column-options", OptionList)
        if options.highlighted is None:
            return
        key = options.get_option_at_index(options.highlighted).id
        self.shown = [k for k in self.shown if k != key] if key in self.shown else insert_column(self.shown, key)
        if not self.shown:  # a table needs a column: the last one stays
            self.shown = [key]
            self.notify("a table keeps at least one column", severity="warning")
        options.replace_option_prompt(key, self._option(key).prompt)

    def action_move(self, step: int) -> None:
        options = self.query_one("#column-options", OptionList)
        if options.option_count:
            options.highlighted = ((options.highlighted or 0) + step) % options.option_count

    def action_defaults(self) -> None:
        self.shown = list(self.defaults)
        self._list(self.query_one("#column-search", Input).value)

    def action_done(self) -> None:
        self.dismiss(None if self.shown == self.original else self.shown)
