"""The ``dmltui`` console script: the terminal UI when called alone, the typer CLI otherwise.

Kept apart from ``dmltui.cli`` so that opening the UI does not first build the CLI (typer and its
command modules cost about a quarter of the time to the UI's first paint).
"""

from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) == 1 and sys.stdin.isatty() and sys.stdout.isatty():
        from dmltui.tui import run_tui

        run_tui()
        return
    from dmltui.cli import main as cli_main

    cli_main()  # without arguments and without a terminal (a pipe, a script): the CLI's help, exit code 2
