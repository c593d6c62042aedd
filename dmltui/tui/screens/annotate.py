"""Tags and notes edited where the runs are seen: one run's tags and note, or tags added to and removed from the
selected runs, through ``dmltui.runs.annotate`` (the store transaction ``runs tag`` and ``runs note`` use)."""

from __future__ import annotations

import re
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static, TextArea

from dmltui import runs as run_ops


def split_tags(text: str) -> list[str]:
    """``paper, best  sweep`` -> ["paper", "best", "sweep"]: commas or spaces between tags, each one checked."""
    return list(dict.fromkeys(run_ops.check_tag(tag) for tag in re.split(r"[,\s]+", text) if tag))


def tag_changes(records: list[dict[str, Any]], tags_text: str, remove_text: str = "") -> list[tuple[dict, list, list]]:
    """Per run: (record, tags to add, tags to remove). One run: the box holds its whole tag list, so the difference
    from its tags; several: the tags to add and to remove, for each. ValueError for a malformed tag."""
    wanted, removed = split_tags(tags_text), split_tags(remove_text)
    if len(records) == 1:
        current = records[0].get("tags", [])
        return [(records[0], [t for t in wanted if t not in current], [t for t in current if t not in wanted])]
    return [(record, wanted, removed) for record in records]


class AnnotateScreen(ModalScreen[None]):
    """ctrl+s saves, escape cancels."""

    BINDINGS = [Binding("ctrl+s", "save", "Save", priority=True), Binding("escape", "cancel", "Cancel", priority=True)]

    def __init__(self, records: list[dict[str, Any]]):
        super().__init__()
        self.records = records

    def compose(self) -> ComposeResult:
        one = len(self.records) == 1
        with Vertical(classes="dialog", id="annotate-dialog"):
            title = f"Tags and note of {self.records[0]['name']}" if one else f"Tags of {len(self.records)} selected runs"
            yield Label(title + " (ctrl+s saves, escape cancels)", classes="question")
            if one:
                yield Input(" ".join(self.records[0].get("tags", [])), placeholder="tags, separated by spaces or commas",
                            id="tags")
                yield TextArea(self.records[0].get("notes", ""), id="note")
            else:
                yield Input(placeholder="tags to add", id="tags")
                yield Input(placeholder="tags to remove", id="remove")
                yield Label("notes: one run at a time", classes="hint")
            yield Static(id="annotate-error")

    def on_mount(self) -> None:
        self.set_focus(self.query_one("#tags", Input))

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_save()

    def action_save(self) -> None:
        remove = self.query("#remove")
        try:  # every tag is checked before anything is written
            changes = tag_changes(self.records, self.query_one("#tags", Input).value,
                                  remove.first(Input).value if remove else "")
        except ValueError as error:
            box = self.query_one("#annotate-error", Static)
            box.update(Text(str(error), style="red"))
            return
        note = self.query_one("#note", TextArea).text if len(self.records) == 1 else None
        if note == self.records[0].get("notes", ""):
            note = None
        self._write(changes, note)

    def _write(self, changes: list[tuple[dict, list, list]], note: str | None) -> None:
        """The store transactions off the UI thread (the store's lock may be held for a while by another dmltui)."""
        app = self.app

        def write() -> None:
            try:
                for record, add, remove in changes:
                    if add or remove or note is not None:
                        run_ops.annotate(record, add_tags=add, remove_tags=remove, notes=note)
            except Exception as error:  # noqa: BLE001 - a busy store, a run deleted meanwhile: said in one line
                app.call_from_thread(app.notify, f"tags and notes not saved: {error}", severity="error")
                return
            added = sorted({t for _, add, _ in changes for t in add})
            removed = sorted({t for _, _, remove in changes for t in remove})
            words = [*(f"+{t}" for t in added), *(f"−{t}" for t in removed), *(["note saved"] if note is not None else [])]
            app.call_from_thread(app.notify, f"{len(changes)} run{'s' * (len(changes) != 1)}: {' '.join(words) or 'unchanged'}")
            app.call_from_thread(app.refresh_runs)
            app.call_from_thread(self.dismiss, None)

        self.run_worker(write, thread=True, group="annotate", exclusive=True, exit_on_error=False,
                        description="saving tags and notes")

    def action_cancel(self) -> None:
        self.dismiss(None)
