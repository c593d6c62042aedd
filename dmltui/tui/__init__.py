"""The Textual TUI (``dmltui`` with no arguments, or ``dmltui tui``)."""

from __future__ import annotations


def run_tui() -> None:
    from dmltui.tui.app import DmlTuiApp

    DmlTuiApp().run()
