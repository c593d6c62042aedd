"""``dmltui tui`` (and ``dmltui`` alone): the terminal UI."""

from __future__ import annotations


def tui() -> None:
    """Open the terminal UI: runs, new runs from presets, live run views, comparison, GPUs."""
    from dmltui.tui import run_tui

    run_tui()
