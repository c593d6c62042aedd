"""Watching runs cheaply: what the TUI polls every second (and ``runs tail`` could use).

``RunsMonitor`` keeps the store's records in memory and re-reads the store file only when
its modification time or size changed. Live runs (queued, running) are re-summarised from
their run directories only when status.json or metrics.jsonl changed, or when their
process died; a changed summary is written back to the store in one locked write. So an
idle screen with a thousand stored runs and a few live ones costs a few ``stat`` calls
per poll.

``FileTail`` reads what was appended to a file since the last call (whole lines only) and
notices when the file was replaced (a resumed run rewrites metrics.jsonl).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmltui import runs as run_ops
from dmltui.listing import LIVE_STATES
from dmltui.store import RunStore
from engine.io import parse_json_object


def _signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of *path*, None when it does not exist."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@dataclass
class RunsMonitor:
    """The store's runs, kept current with as little I/O as possible; ``poll()`` says whether anything changed."""

    store: RunStore = field(default_factory=run_ops.open_store)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    _store_signature: tuple[int, int, int] | None = None
    _run_signatures: dict[str, tuple] = field(default_factory=dict)

    def poll(self) -> bool:
        """Refresh; True when the set of runs or any run's fields changed since the last poll."""
        changed = False
        signature = _signature(self.store.path)
        if signature != self._store_signature or signature is None and self.records:
            self.records = {r["id"]: r for r in self.store.all()} if signature else {}
            self._store_signature = _signature(self.store.path)
            changed = True
        candidates = []
        for run_id, record in self.records.items():
            if record["state"] not in LIVE_STATES:
                continue
            run_dir = Path(record["run_dir"])
            signature = (_signature(run_dir / "status.json"), _signature(run_dir / "metrics.jsonl"))
            pid = record.get("pid")
            if signature == self._run_signatures.get(run_id) and (not pid or run_ops.pid_alive(pid)):
                continue
            self._run_signatures[run_id] = signature
            candidates.append(run_id)
        if candidates:  # re-summarised inside the store's transaction, which writes only what changed
            with self.store.transaction() as tx:
                others_wrote = _signature(self.store.path) != self._store_signature
                known = set(tx.ids())
                updated = [tx.modify(run_id, run_ops.refresh) for run_id in candidates if run_id in known]
            for record in updated:
                changed = changed or record != self.records.get(record["id"])
                self.records[record["id"]] = record
            # After only our own write there is nothing new to read; after another process's, the next poll reads it.
            self._store_signature = None if others_wrote else _signature(self.store.path)
        return changed

    def runs(self) -> list[dict[str, Any]]:
        """Newest first."""
        return sorted(self.records.values(), key=lambda r: r["created_at"], reverse=True)

    def live_count(self) -> int:
        return sum(r["state"] in LIVE_STATES for r in self.records.values())


class FileTail:
    """Whole lines appended to a file since the last read; starts over when the file is replaced or shrinks."""

    def __init__(self, path: str | os.PathLike, *, parse: Callable[[str], Any] | None = None):
        self.path = Path(path)
        self.parse = parse
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""

    def read(self) -> tuple[list[Any], bool]:
        """(new items, reset): *reset* is True when the file was replaced and the items are its whole content."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            reset = self._offset > 0
            self._inode, self._offset, self._partial = None, 0, b""
            return [], reset
        reset = False
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            reset = self._inode is not None
            self._inode, self._offset, self._partial = stat.st_ino, 0, b""
        if stat.st_size == self._offset:
            return [], reset
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read(stat.st_size - self._offset)
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")  # a torn last line waits for the rest of it
        items = []
        for raw in lines:
            text = raw.decode("utf-8", errors="replace")
            if not text.strip():
                continue
            if self.parse is None:
                items.append(text)
                continue
            try:
                items.append(self.parse(text))
            except ValueError:
                continue
        return items, reset


def metrics_tail(run_dir: str | os.PathLike) -> FileTail:
    return FileTail(Path(run_dir) / "metrics.jsonl", parse=parse_json_object)


def log_tail(run_dir: str | os.PathLike, name: str = "train.log") -> FileTail:
    return FileTail(Path(run_dir) / name)


def epoch_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """metrics.jsonl records folded into one row per epoch: {"epoch", "train/loss", "test/e_recall@1", ...}.

    Scalar values only (arrays such as rho_spectrum@0 are left out); epoch 0 is the untrained network."""
    rows: dict[int, dict[str, Any]] = {}
    for record in records:
        epoch = record.get("epoch")
        if record.get("kind") not in ("train", "eval") or epoch is None:
            continue
        row = rows.setdefault(epoch, {"epoch": epoch})
        for name, value in record.get("metrics", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[f"{record.get('split')}/{name}"] = value
    return [rows[e] for e in sorted(rows)]
