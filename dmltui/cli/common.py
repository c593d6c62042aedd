"""Conventions shared by every command: data on stdout, messages on stderr, meaningful exit codes."""

from __future__ import annotations

import json
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
    """JSON for scripts: the standard json module (rich would wrap long lines)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
