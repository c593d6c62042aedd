"""Conventions shared by every command: data on stdout, messages on stderr, meaningful exit codes."""

from __future__ import annotations

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
