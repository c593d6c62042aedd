"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target.

Readers never see a half-written file; a crash leaves either the old or the new
version (plus, at worst, a stray ``.tmp-*`` file that is never read).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        # torch.save reports a full disk as "enforce fail ... unexpected pos": looked at before the partial file goes
        full = isinstance(error, Exception) and not isinstance(error, OSError) and _disk_full(path.parent)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from error
        raise


def _disk_full(folder: Path) -> bool:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 1 << 16  # less than one write's worth left


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    _atomic_write(path, lambda handle: torch.save(obj, handle))


def append_line(path: Path, line: str) -> None:
    """Append one line with a single write on an O_APPEND descriptor (lines never interleave)."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def parse_json_object(line: str) -> dict[str, Any]:
    """One JSON object; ValueError for anything else (a torn line, garbage, a JSON list or number)."""
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON object line of *path*; anything else (a torn last line after a crash, garbage) is skipped."""
    records = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return records
    for line in text.splitlines():
        if line.strip():
            try:
                records.append(parse_json_object(line))
            except ValueError:  # json.JSONDecodeError included
                continue
    return records
