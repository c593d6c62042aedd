"""Watching runs cheaply: what the TUI polls every second (and ``runs tail`` could use).

``RunsMonitor`` keeps the store's records in memory and re-reads the store file only when
its modification time or size changed. Runs whose state can still change (the live
partition: queued, running, stalled, crashed while not proven gone) are re-derived from
their run directories only when one of the facts the state machine reads changed: status.json
or metrics.jsonl, the liveness of their pid (or their launcher's), their squeue entry (one
squeue call, asked before any lock, serves every run), or their silence crossing one of the
state machine's thresholds. The same rule holds for every executor kind. A changed summary is
written back to the store in one locked write. So an idle screen with ten thousand stored runs
and a few live ones costs a few ``stat`` calls per poll, however many runs have ended.

``FileTail`` reads what was appended to a file since the last call (whole lines only) and
notices when the file was replaced (a resumed run rewrites metrics.jsonl).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmltui import runs as run_ops
from dmltui import states
from dmltui.executors import slurm
from dmltui.states import LIVE_STATES
from dmltui.store import RunStore, newer, newest_documents, record_of
from engine.io import parse_json_object
from engine.rundir import RunDir


def _signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of *path*, None when it does not exist."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@dataclass
class RunsMonitor:
    """The store's runs, kept current with as little I/O as possible; ``poll()`` says whether anything changed.

    The store's files are re-read only when their (inode, size, mtime) changed, one by one: live runs' updates
    rewrite the small live file, and the thousands of ended runs in their partitions are not read again. A record
    that did not change keeps its identity (the runs table redraws only the rows whose record was replaced)."""

    store: RunStore = field(default_factory=run_ops.open_store)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    _files: dict[Path, tuple[Any, list[dict[str, Any]]]] = field(default_factory=dict)
    _ended: dict[str, dict[str, Any]] = field(default_factory=dict)  # run id -> document, of the ended partitions
    _ended_records: dict[str, dict[str, Any]] = field(default_factory=dict)
    _run_signatures: dict[str, tuple] = field(default_factory=dict)
    changed_ids: set[str] | None = None  # after a poll: the runs whose record changed; None: runs came or went
    _live_ids: list[str] = field(default_factory=list)  # the runs of the live file: the only ones that can change
    _newest_first: list[dict[str, Any]] | None = None

    def _read_store(self) -> None:
        """Re-read the files that changed (under the store's lock); records that did not change keep their identity."""
        marks = {file: mark for file in self.store.files() if (mark := _signature(file)) is not None}
        if marks == {file: known[0] for file, known in self._files.items()}:
            return
        files = self.store.snapshot(self._files, _signature)
        previous = self.records
        ended = {file: known for file, known in files.items() if file != self.store.path}
        if ended.keys() != self._files.keys() - {self.store.path} or any(known is not self._files.get(file)
                                                                         for file, known in ended.items()):
            self._ended = newest_documents(docs for _, docs in ended.values())
            self._ended_records = {run_id: _kept(previous, record_of(doc)) for run_id, doc in self._ended.items()}
        self._files = files
        records = dict(self._ended_records)
        self._live_ids = []
        for doc in files.get(self.store.path, (None, []))[1]:
            other = self._ended.get(doc["id"])
            if other is None or not newer(other, doc):
                records[doc["id"]] = _kept(previous, record_of(doc))
                self._live_ids.append(doc["id"])
        self.records = records

    def poll(self) -> bool:
        """Refresh; True when the set of runs or any run's fields changed since the last poll (``changed_ids`` says
        which runs, so that a screen of thousands can update a few rows instead of redrawing)."""
        previous = self.records
        self._read_store()
        if previous.keys() != self.records.keys():
            changed: set[str] | None = None
        else:
            changed = {run_id for run_id, record in self.records.items() if previous[run_id] is not record}
        unsettled = [record for run_id in self._live_ids if (record := self.records.get(run_id))]
        jobs = run_ops.queue_for(unsettled)
        host = socket.gethostname()
        candidates: dict[str, tuple] = {}
        for record in unsettled:
            signature = facts_signature(record, jobs, host)
            if signature != self._run_signatures.get(record["id"]):
                candidates[record["id"]] = signature
        if candidates:  # re-derived inside one transaction, which reads and writes only the live file
            refresh = run_ops.refresher(jobs)  # (and a month's partition when a run ended)
            with self.store.transaction() as tx:
                live = {record["id"] for record in tx.live()}
                updated = [tx.modify(run_id, refresh) for run_id in candidates if run_id in live]
            # recorded once committed: a poll that failed (a busy store) leaves them to be re-derived by the next one
            self._run_signatures.update(candidates)
            for record in updated:
                if record != self.records.get(record["id"]):
                    self.records[record["id"]] = record
                    if changed is not None:
                        changed.add(record["id"])
        self.changed_ids = changed
        if changed is None or changed:
            self._newest_first = None
            return True
        return False

    def runs(self) -> list[dict[str, Any]]:
        """Newest first (sorted once per change: screens ask often)."""
        if self._newest_first is None:
            self._newest_first = sorted(self.records.values(), key=lambda r: r["created_at"], reverse=True)
        return self._newest_first

    def live(self) -> list[dict[str, Any]]:
        """The runs in a live state: queued, running, requeued, stalled (without looking at the thousands of ended ones)."""
        return [record for run_id in self._live_ids if (record := self.records.get(run_id)) and record["state"] in LIVE_STATES]

    def live_count(self) -> int:
        return len(self.live())


def facts_signature(record: dict[str, Any], jobs: dict[str, slurm.QueuedJob] | None, host: str) -> tuple:
    """Everything the state machine reads about a run, cheaply: status.json's and metrics.jsonl's (inode, size,
    mtime), which of the silence thresholds the status file has crossed, and the executor's facts (pid and launcher
    liveness, or the squeue entry). The run is re-derived when this changes."""
    run_dir = Path(record["run_dir"])
    status_mark = _signature(run_dir / "status.json")
    executor = record.get("executor")
    silence = None if status_mark is None else time.time() - status_mark[2] / 1e9
    thresholds = (states.stale_seconds(executor), states.SLURM_SETTLE_SECONDS if executor == "slurm"
                  else states.OTHER_HOST_LOST_SECONDS)
    crossed = None if silence is None else tuple(silence > limit for limit in thresholds)
    if executor == "slurm":
        entry = None if jobs is None else jobs.get(str(record.get("slurm_job_id")), "gone")
        facts: tuple = (entry,)
    else:
        pid = record.get("pid")
        facts = (bool(pid) and record.get("host", host) == host and states.pid_alive(pid),)
    started = record.get("slurm_job_id") if executor == "slurm" else record.get("pid")
    launcher_pid = None if started else _launcher_pid(run_dir, host)
    facts += (launcher_pid is not None and states.pid_alive(launcher_pid),)
    return status_mark, _signature(run_dir / "metrics.jsonl"), crossed, facts


def _launcher_pid(run_dir: Path, host: str) -> int | None:
    """The dmltui process that vouches for a run without a process (or job) of its own yet: read only for such runs."""
    status = RunDir(run_dir).read_status()
    return status.get("launcher_pid") if status.get("launcher_host", host) == host else None


def _kept(previous: dict[str, dict[str, Any]], record: dict[str, Any]) -> dict[str, Any]:
    """The record already held when it is equal (its identity tells the runs table the row is unchanged)."""
    held = previous.get(record["id"])
    return held if held == record else record


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
