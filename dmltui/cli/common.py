"""Conventions shared by every command: data on stdout, messages on stderr, meaningful exit codes."""

from __future__ import annotations

import os
import sys
from enum import IntEnum
from typing import Any, NoReturn

import typer
from rich.console import Console

stdout = Console()
stderr = Console(stderr=True)


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2  # also invalid configuration
    NOT_FOUND = 3
    BUSY = 4
    INTERRUPTED = 130


def fail(message: str | list[str], code: ExitCode = ExitCode.FAILED) -> NoReturn:
    for line in [message] if isinstance(message, str) else message:
        print(f"error: {line}", file=sys.stderr)
    raise typer.Exit(int(code))


def print_json(data: Any) -> None:
    """JSON with sorted keys (orjson: 10,000 runs print in a few milliseconds; rich would wrap long lines): indented
    on a terminal, for people; one compact line when piped, for scripts."""
    import orjson

    options = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if sys.stdout.isatty() else 0)
    sys.stdout.flush()
    sys.stdout.buffer.write(orjson.dumps(data, option=options, default=str) + b"\n")
    sys.stdout.buffer.flush()


GPUS_HELP = ("auto (queue for free GPUs), cpu, or indices like 0,1; default: auto on a machine with GPUs, cpu on one "
             "without. GPUs this machine lacks are an error")


def checked_gpus(text: str | None, *, per_run: int = 1) -> str:
    """The --gpus value this machine can serve, or exit 2 with one line naming the GPUs it has."""
    from dmltui.gpus import resolve_request

    try:
        return resolve_request(text, per_run=per_run)
    except ValueError as error:
        fail(str(error), ExitCode.USAGE)


def print_fitted_table(headers: list[str], rows: list[list[str]], keep_order: list[str], *, styles: dict[str, list[str]]
                       | None = None) -> list[str]:
    """A table of whole values that fits the terminal: rather than cut every cell ("stopp…"), the columns that matter
    least (last in *keep_order*) are left out until the rest fits, as ``gh run list`` and ``kubectl get`` do; a note
    on stderr names them. Into a pipe (without $COLUMNS) nothing is left out. *styles*: a rich style per cell of a
    column. Returns the headers left out."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Column, Table

    limited = stdout.is_terminal or "COLUMNS" in os.environ
    width = stdout.width if limited else None
    natural = {h: max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)}
    shown = list(headers)
    gap = 2  # rich's padding between columns
    for header in reversed(keep_order):
        if width is None or sum(natural[h] for h in shown) + gap * (len(shown) - 1) <= width:
            break
        if header in shown and len(shown) > 1:
            shown.remove(header)
    table = Table(*(Column(h, no_wrap=True, min_width=natural[h]) for h in shown), box=None, pad_edge=False)
    for r, row in enumerate(rows):
        cells = []
        for i, header in enumerate(headers):
            if header in shown:
                style = (styles or {}).get(header)
                cells.append(f"[{style[r]}]{escape(row[i])}[/]" if style else escape(row[i]))
        table.add_row(*cells)
    (stdout if limited else Console(width=100_000)).print(table)
    left_out = [h for h in headers if h not in shown]
    if left_out and rows:
        print(f"note: {width} columns leave out {', '.join(left_out)} (a wider terminal, or --json, shows them)",
              file=sys.stderr)
    return left_out
