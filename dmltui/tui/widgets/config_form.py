"""The config form of the new-run screen: one tab per config section, one typed input per key.

The fields come from :func:`dmltui.form_fields.field_specs` (the config's JSON schema): integers and
numbers are restricted inputs, booleans are ``[x]`` toggles, names from a registry or an enum are
selects, lists are comma-separated text. Each field shows the preset's resolved value until it is
edited; an edited field is marked ``*`` (and its tab too) and becomes a ``--set`` override. The
validator's messages appear under the field they name.

Only the first tab's fields are built and mounted with the form; each other tab's when it is first
opened. A hundred-odd rows of widgets cost Textual about a second to build, mount and style, and the
form must be usable within one. Until its tab is opened, a field reads as the preset's value (or what
``set_value`` gave it), and its choices, value and message are applied when it mounts.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Input, Label, Select, Static, TabbedContent, TabPane

from dmltui.form_fields import (
    LAUNCH_KEYS,
    NAMED_PARTS,
    FieldSpec,
    display_value,
    form_overrides,
    is_changed,
    options_for,
    visible,
)


def row_id(key: str) -> str:
    return "row-" + key.replace(".", "-")


def editor_id(key: str) -> str:
    return "field-" + key.replace(".", "-")


class Toggle(Widget, can_focus=True):
    """A boolean as text, ``[x] true`` / ``[ ] false``: readable in any number of colours."""

    BINDINGS = [Binding("enter,space", "toggle", "Toggle", show=False)]
    DEFAULT_CSS = """
    Toggle { width: auto; height: 1; padding: 0; }
    Toggle:focus { background: $primary 40%; text-style: bold; }
    """

    value: reactive[bool] = reactive(False)

    class Changed(Message):
        def __init__(self, toggle: Toggle, value: bool):
            super().__init__()
            self.toggle, self.value = toggle, value

        @property
        def control(self) -> Toggle:
            return self.toggle

    def __init__(self, value: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.set_reactive(Toggle.value, value)

    def render(self) -> Text:
        return Text("[x] true" if self.value else "[ ] false")

    def watch_value(self, value: bool) -> None:
        self.post_message(self.Changed(self, value))

    def action_toggle(self) -> None:
        self.value = not self.value

    def on_click(self, event: events.Click) -> None:
        self.action_toggle()


class FieldRow(Vertical):
    """One config key: its name, a typed input, and the validator's message under it."""

    def __init__(self, spec: FieldSpec, value: Any = None):
        super().__init__(id=row_id(spec.key), classes="field-row")
        self.spec = spec
        self.edited = False
        self.base_options: list[str] = list(spec.choices)
        self.options: list[str] = options_for(spec, value) if spec.kind == "choice" else []
        self.label = Label(spec.label, classes="field-label")
        self._editor = self._make_editor(value)
        self.error = Static("", classes="field-error")
        self.error.display = False

    def compose(self) -> ComposeResult:
        with Horizontal(classes="field-line"):
            yield self.label
            yield self._editor
        yield self.error

    def _make_editor(self, value: Any) -> Widget:
        spec = self.spec
        tooltip = f"{spec.key} ({spec.type_text}): {spec.description}"
        if spec.kind == "bool":
            editor: Widget = Toggle(bool(value), id=editor_id(spec.key))
        elif spec.kind == "choice":
            editor = Select([(o, o) for o in self.options or [""]], allow_blank=spec.nullable, compact=True,
                            id=editor_id(spec.key), prompt="(default)",
                            value=str(value) if value is not None else Select.NULL if spec.nullable else (self.options or [""])[0])
        else:
            kind = {"int": "integer", "float": "number"}.get(spec.kind, "text") if spec.kind != "list" else "text"
            placeholder = "default" if spec.nullable else "comma-separated" if spec.kind == "list" else ""
            editor = Input(str(display_value(spec, value)), type=kind, placeholder=placeholder, compact=True,
                           id=editor_id(spec.key), select_on_focus=False, valid_empty=spec.nullable)
        editor.tooltip = tooltip
        editor.add_class("field-editor")
        return editor

    @property
    def editor(self) -> Widget:
        return self._editor

    def get_raw(self) -> str | bool:
        editor = self.editor
        if isinstance(editor, Toggle):
            return editor.value
        if isinstance(editor, Select):
            return "" if editor.value is Select.NULL else str(editor.value)
        return editor.value

    def set_raw(self, raw: str | bool) -> None:
        editor = self.editor
        if isinstance(editor, Toggle):
            editor.value = bool(raw)
        elif isinstance(editor, Select):
            self._set_select_options(self.base_options, str(raw) or None)
            editor.value = raw if raw else Select.NULL
        else:
            editor.value = str(raw)

    def set_options(self, options: list[str]) -> None:
        """The names a select offers (the registry's), keeping the current value."""
        self.base_options = list(options)
        raw = self.get_raw()
        self._set_select_options(self.base_options, str(raw) or None)

    def _set_select_options(self, base: list[str], current: str | None) -> None:
        editor = self.editor
        options = [current, *base] if current is not None and current not in base else list(base)
        if options and options != self.options:
            self.options = options
            editor.set_options([(o, o) for o in options])
            if current is not None:
                editor.value = current

    def mark(self, edited: bool) -> None:
        self.edited = edited
        self.set_class(edited, "-edited")
        self.label.update(("* " if edited else "") + self.spec.label)

    def show_error(self, message: str | None) -> None:
        self.error.update(Text(f"✗ {message}") if message else "")
        self.error.display = bool(message)
        self.set_class(bool(message), "-error")


class Section(VerticalScroll, can_focus=False):
    """One tab's fields; not a tab stop of its own (focusing a field scrolls it into view)."""


class ConfigForm(Vertical):
    """Tabs of config sections. ``values()`` is what the inputs hold; ``overrides()`` what differs from the preset."""

    class Changed(Message):
        """A field was edited (or set to the preset's value)."""

        def __init__(self, key: str):
            super().__init__()
            self.key = key

    class FieldFocused(Message):
        def __init__(self, spec: FieldSpec):
            super().__init__()
            self.spec = spec

    def __init__(self, specs: list[FieldSpec], baseline: dict[str, Any], **kwargs: Any):
        """*baseline*: the preset's resolved values (flat keys), the fields' initial values."""
        super().__init__(**kwargs)
        self.specs = [s for s in specs if s.key not in LAUNCH_KEYS]
        self.by_key = {s.key: s for s in self.specs}
        self.sections = list(dict.fromkeys(s.section for s in self.specs))
        self.baseline: dict[str, Any] = dict(baseline)
        self.errors: dict[str, str] = {}
        self.ready = False  # the first tab's fields are mounted and show the form's state
        self.choices: dict[str, list[str]] = {}
        self._rows: dict[str, FieldRow] = {}  # the fields of the tabs opened so far
        self._pending: dict[str, str | bool] = {}  # set_value on fields whose tab is not open yet
        self._opened: set[str] = set()

    def _open(self, section: str) -> list[FieldRow]:
        """The rows of *section*, made now (building a field's widgets costs milliseconds: only opened tabs pay)."""
        self._opened.add(section)
        rows = [FieldRow(spec, self.baseline.get(spec.key, spec.default)) for spec in self.specs if spec.section == section]
        self._rows.update((row.spec.key, row) for row in rows)
        return rows

    def compose(self) -> ComposeResult:
        with TabbedContent(id="sections"):
            for index, section in enumerate(self.sections):
                with TabPane(section, id=f"section-{section}"):
                    yield Section(*(self._open(section) if index == 0 else ()), classes="section", id=f"fields-{section}")

    def on_mount(self) -> None:
        self.call_after_refresh(self._now_ready)

    def _now_ready(self) -> None:
        self.ready = True
        self._apply_state(self._live_rows())

    @on(TabbedContent.TabActivated)
    async def _tab_opened(self, event: TabbedContent.TabActivated) -> None:
        section = (event.pane.id or "").removeprefix("section-")
        if section in self._opened or section not in self.sections:
            return
        rows = self._open(section)
        await self.query_one(f"#fields-{section}", Section).mount_all(rows)
        self._apply_state(rows)

    def _apply_state(self, rows: list[FieldRow]) -> None:
        """Bring newly mounted rows up to the form's state: choices, value, mark, message."""
        if not self.ready:
            return
        for row in rows:
            key = row.spec.key
            if row.spec.registry in self.choices:
                row.set_options(self.choices[row.spec.registry])
            if key in self._pending:
                row.set_raw(self._pending.pop(key))
            elif not row.edited:
                row.set_raw(display_value(row.spec, self.baseline.get(key)))
            row.mark(bool(self.baseline) and is_changed(row.spec, row.get_raw(), self.baseline.get(key)))
            row.show_error(self.errors.get(key))
        self.update_visibility()
        self._tab_labels(self._edited_sections())

    # ------------------------------------------------------------------ access
    def row(self, key: str) -> FieldRow:
        return self._rows[key]

    def rows(self) -> list[FieldRow]:
        return list(self._rows.values())

    def _live_rows(self) -> list[FieldRow]:
        return [row for row in self._rows.values() if row.is_mounted]

    def value(self, key: str) -> str | bool:
        """What the field holds, or (its tab not opened yet) what it will show."""
        row = self._rows.get(key)
        if row is not None and row.is_mounted:
            return row.get_raw()
        return self._pending.get(key, display_value(self.by_key[key], self.baseline.get(key)))

    def values(self) -> dict[str, str | bool]:
        return {key: self.value(key) for key in self.by_key}

    def overrides(self):
        return form_overrides(self.specs, self.values(), self.baseline)

    def set_value(self, key: str, raw: str | bool) -> None:
        """Set a field as if typed."""
        row = self._rows.get(key)
        if row is None or not row.is_mounted:
            self._pending[key] = raw
            self._tab_labels(self._edited_sections())
            return
        row.set_raw(raw)
        if self.ready and self.baseline:
            row.mark(is_changed(row.spec, raw, self.baseline.get(key)))

    # ------------------------------------------------------------------ preset values and choices
    def set_baseline(self, baseline: dict[str, Any]) -> None:
        """Show a newly resolved preset: untouched fields take its values, edited fields keep theirs."""
        self.baseline = dict(baseline)
        if not self.ready:
            return  # applied once mounted
        for row in self._live_rows():
            if not row.edited:
                row.set_raw(display_value(row.spec, baseline.get(row.spec.key)))
        self.refresh_marks()

    def reset(self, key: str) -> None:
        spec = self.by_key[key]
        self._pending.pop(key, None)
        if key in self._rows and self._rows[key].is_mounted:
            self._rows[key].set_raw(display_value(spec, self.baseline.get(key)))

    def set_choices(self, choices: dict[str, list[str]]) -> None:
        self.choices = dict(choices)
        if not self.ready:
            return
        for row in self._live_rows():
            if row.spec.registry in choices:
                row.set_options(choices[row.spec.registry])

    # ------------------------------------------------------------------ marks, errors, visibility
    def _edited_sections(self) -> set[str]:
        edited = {row.spec.section for row in self._live_rows() if row.edited}
        return edited | {self.by_key[key].section for key, raw in self._pending.items()
                         if is_changed(self.by_key[key], raw, self.baseline.get(key))}

    def refresh_marks(self) -> None:
        if not self.ready:
            return
        for row in self._live_rows():
            edited = bool(self.baseline) and is_changed(row.spec, row.get_raw(), self.baseline.get(row.spec.key))
            if edited != row.edited:
                row.mark(edited)
        self._tab_labels(self._edited_sections())

    def show_errors(self, errors: dict[str, str]) -> None:
        """*errors*: key -> message (one per field); every other field's message is cleared."""
        self.errors = dict(errors)
        if not self.ready:
            return
        for row in self._live_rows():
            row.show_error(errors.get(row.spec.key))
        self.update_visibility()
        self._tab_labels(self._edited_sections())

    def _tab_labels(self, edited_sections: set[str]) -> None:
        if not self.ready:
            return
        tabs = self.query_one(TabbedContent)
        failing = {self.by_key[k].section for k in self.errors if k in self.by_key}
        for section in self.sections:
            mark = "!" if section in failing else "*" if section in edited_sections else ""
            tab = tabs.get_tab(f"section-{section}")
            label = f"{section}{mark}"
            if str(tab.label) != label:
                tab.label = label

    def update_visibility(self) -> None:
        """Only the chosen loss's and miner's parameters are shown (and any edited or failing one)."""
        names = {key: str(self.value(key)) for key in NAMED_PARTS.values() if key in self.by_key}
        for row in self._live_rows():
            row.display = visible(row.spec, names) or row.edited or row.spec.key in self.errors

    # ------------------------------------------------------------------ events
    def _changed(self, widget: Widget) -> None:
        row = next((a for a in widget.ancestors if isinstance(a, FieldRow)), None)
        if row is None or not self.ready:
            return
        key = row.spec.key
        if self.baseline:
            edited = is_changed(row.spec, row.get_raw(), self.baseline.get(key))
            if edited != row.edited:
                row.mark(edited)
                self._tab_labels(self._edited_sections())
        if key in NAMED_PARTS.values():
            self.update_visibility()
        self.post_message(self.Changed(key))

    @on(Input.Changed, ".field-editor")
    @on(Select.Changed, ".field-editor")
    @on(Toggle.Changed, ".field-editor")
    def _editor_changed(self, event: Message) -> None:
        event.stop()
        self._changed(event.control)

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        row = next((a for a in event.widget.ancestors_with_self if isinstance(a, FieldRow)), None)
        if row is not None:
            self.post_message(self.FieldFocused(row.spec))
