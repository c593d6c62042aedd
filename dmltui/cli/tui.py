"""``dmltui tui`` (and ``dmltui`` alone): the terminal UI."""

from __future__ import annotations

import typer


def tui() -> None:
    """Open the terminal UI: runs, new runs from presets, live run views, comparison, GPUs."""
    from dmltui.tui import run_tui

    run_tui()


def root(ctx: typer.Context) -> None:
    """Deep metric learning runs: presets, training, run store. Without a command: the terminal UI."""
    if ctx.invoked_subcommand is None:
        tui()
