"""The run store: TinyDB documents of run summaries, split into a live file and ended partitions.

Layout (schema 3), next to each other in the dmltui home::

    runs.json                the live partition: queued and running runs, and the store's meta document
                             {"meta": {"1": {"schema_version": 3}}, "runs": {"1": {"id": ..., "state": "running", ...}}}
    runs.d/ended-202611.json ended runs (finished, stopped, crashed, ...) by the month in their id (YYYYMM...)
    runs.d/ended-other.json  ended runs whose id does not start with a date

A document is what listing, filtering, sorting and comparing read: name, preset, tags, notes, dataset,
loss, miner, seed, state, epochs, the best and last value of each metric, and the config keys where the
run differs from a frozen reference (``config_changes``: what queries read, ``dmltui.config_summary``).
Whole configs are not stored: a run's resolved config is its run directory's config.toml
(``runs.load_config``). So a store of 10,000 runs is ~1.5 KB per run, and the runs that change (live
ones) sit in a file of kilobytes: updating one never parses or rewrites the thousands of ended runs. A
run that ends moves to its month's partition; a resumed one moves back.

TinyDB rewrites a whole file on every write and concurrent writers would lose updates, so every
operation is a :class:`Transaction`: one file lock for the whole store, a fresh TinyDB per partition it
touches (each read at most once, only when needed), changes computed *from what it reads there*
(``modify`` hands the change function the current record), and each changed file replaced once,
atomically (temp file + fsync + rename), before the lock is released. An operation that fails writes
nothing, and a crash never leaves a torn file.

A move between two files is written destination first: a crash in between leaves the run in both, never
in neither. Each document carries a revision (``_rev``, hidden from callers); where a run is found twice,
the higher revision wins (``newest_documents``) and a transaction that reads both drops the other copy.
"""

from __future__ import annotations

import copy
import gc
import json
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from filelock import FileLock, Timeout
from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Document

from dmltui.states import is_final
from engine.io import atomic_write_bytes

SCHEMA_VERSION = 3
RUNS_TABLE = "runs"
META_TABLE = "meta"
REVISION_KEY = "_rev"  # in a stored document: how many times it was changed (decides between two copies)
_META_ID = "1"  # TinyDB document id of the one meta document


class StoreError(RuntimeError):
    """The store file cannot be used (corrupt, newer schema); nothing was changed."""


class StoreBusy(StoreError):
    """Another process held the store's lock for longer than the timeout."""


class DuplicateRun(StoreError):
    """A new run's id is already in the store."""


def partitions_dir(store_path: Path) -> Path:
    """Where the ended partitions of the store at *store_path* live (``runs.json`` -> ``runs.d``)."""
    return store_path.with_name(f"{store_path.stem}.d")


def is_live(record: dict[str, Any]) -> bool:
    """Whether the run's state can still change by itself (queued, running, stalled, or crashed while not proven
    gone: ``dmltui.states``): it belongs in the live partition, which readers re-check."""
    return not is_final(record)


def period_of(run_id: str) -> str:
    """The ended partition of a run: the year and month its id starts with (``20261129-...`` -> ``202611``)."""
    return run_id[:6] if len(run_id) > 8 and run_id[:8].isdigit() and run_id[8] == "-" else "other"


def record_of(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored document as callers see it: a new dict, without the revision."""
    record = dict(doc)
    record.pop(REVISION_KEY, None)
    return record


def newer(doc: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether *doc* is a later version of the same run than *other* (two copies after a crash mid-move)."""
    return doc.get(REVISION_KEY, 0) > other.get(REVISION_KEY, 0)


def newest_documents(groups: Iterable[Iterable[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Run id -> stored document, from several files' documents: the newer copy where a run is in two."""
    kept: dict[str, dict[str, Any]] = {}
    for docs in groups:
        for doc in docs:
            seen = kept.get(doc["id"])
            if seen is None or newer(doc, seen):
                kept[doc["id"]] = doc
    return kept


# --- reading schema 1 and 2 files (configs in the store) -------------------------------------------------------


def expand_config(base: dict[str, Any], diff: dict[str, Any]) -> dict[str, Any]:
    """The full config of a schema-2 ``config_diff``: a deep copy of *base* with the diff's sets and deletions."""
    config = copy.deepcopy(base)
    for path, value in diff.get("set", ()):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    for path in diff.get("del", ()):
        node = config
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return config


def migrated(doc: dict[str, Any], base: Any) -> dict[str, Any]:
    """A schema-1 or -2 document as schema 3: without its config where the run directory holds config.toml.
    Where it does not (the directory is gone), the full config stays in the document, so nothing is lost."""
    record = {key: value for key, value in doc.items() if key not in ("config", "config_diff")}
    config = doc.get("config")
    if "config_diff" in doc:
        if not isinstance(base, dict):
            raise StoreError("the run store has packed configs but no config_base: it is damaged. "
                             "Move it aside and run `dmltui db rebuild` to re-create it from the run directories")
        config = expand_config(base, doc["config_diff"])
    if config is not None and not (Path(str(doc.get("run_dir", ""))) / "config.toml").is_file():
        record["config"] = config
    return record


# --- one file ----------------------------------------------------------------------------------------------------


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a file is parsed: parsing allocates a dict or list per field of every
    run, and each allocation count past a threshold would make the collector walk the growing heap again (a third of
    the parse at 10,000 runs), though parsed JSON holds no cycles. Left as found (another thread may have paused it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()



class AtomicJSONStorage(Storage):
    """TinyDB storage for one locked operation: parses the file once, keeps TinyDB's writes in memory, and
    ``flush()`` replaces the file atomically (an operation that fails writes nothing).

    orjson reads (1.3-1.5x faster than the json module) and writes (about 10x faster), as bench/store.py measures.
    A file orjson refuses is read by the json module, which also names where a corrupt file is broken."""

    def __init__(self, path: str):
        self.path = Path(path)
        self._cache: dict[str, Any] | None = None
        self._dirty = False

    def read(self) -> dict[str, Any] | None:
        if self._cache is None:
            self._cache = self._read_file()
        return self._cache

    def _read_file(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        try:
            with _collector_paused():
                data = orjson.loads(text)
        except orjson.JSONDecodeError:  # NaN (older dmltui wrote it with json), or a corrupt file: json tells which
            try:
                data = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                where = f"line {error.lineno}: {error.msg}" if isinstance(error, json.JSONDecodeError) else str(error)
                raise StoreError(
                    f"run store {self.path} is corrupt ({where}); nothing was changed. "
                    "Move it aside and run `dmltui db rebuild` to re-create it from the run directories"
                ) from None
        if not isinstance(data, dict):
            raise StoreError(f"run store {self.path} is not a TinyDB file (top level is {type(data).__name__})")
        for name in (META_TABLE, RUNS_TABLE):
            table = data.get(name, {})
            if not isinstance(table, dict) or not all(isinstance(doc, dict) for doc in table.values()):
                raise StoreError(f"run store {self.path} is not a TinyDB file (table {name!r} is not a table of documents)")
        return data

    def write(self, data: dict[str, Any]) -> None:
        self._cache = data
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(self.path, orjson.dumps(self._cache))
            except OSError as error:  # a full disk, a read-only mount: the old file is untouched (atomic write)
                raise StoreError(f"run store {self.path} could not be written ({error.strerror or error}); "
                                 "nothing was changed") from None
            except TypeError as error:  # orjson refuses what JSON cannot hold (e.g. integers beyond 64 bits)
                raise StoreError(f"run store {self.path}: a record cannot be stored ({error}); nothing was changed") from None
            self._dirty = False

    def close(self) -> None:
        pass


class Partition:
    """One TinyDB file of run documents inside a transaction: read at most once (on first use), its changes
    handed to TinyDB at commit in two phases (see :meth:`Transaction._commit`)."""

    def __init__(self, path: Path):
        self.path = path
        self.db = TinyDB(str(path), storage=AtomicJSONStorage)
        self._table = self.db.table(RUNS_TABLE, cache_size=0)
        self._docs: dict[str, dict[str, Any]] | None = None  # run id -> document, this transaction's view
        self._doc_ids: dict[str, int] = {}
        self._updated: set[str] = set()
        self._inserted: list[str] = []
        self._removed: list[int] = []
        self._moved_out: list[int] = []  # written in the second phase, after the runs' new partitions

    def docs(self) -> dict[str, dict[str, Any]]:
        if self._docs is None:  # the parsed table as the storage holds it (TinyDB's Document per row: 30 ms at 10,000)
            table = (self.db.storage.read() or {}).get(RUNS_TABLE, {})
            self._docs = {doc["id"]: doc for doc in table.values()}
            self._doc_ids = {doc["id"]: int(doc_id) for doc_id, doc in table.items()}
        return self._docs

    def put(self, doc: dict[str, Any]) -> None:
        """Insert or replace the run's document."""
        run_id = doc["id"]
        docs = self.docs()
        docs[run_id] = doc
        doc_id = self._doc_ids.get(run_id)
        if doc_id is None:
            if run_id not in self._inserted:
                self._inserted.append(run_id)
            return
        for dropped in (self._removed, self._moved_out):
            if doc_id in dropped:
                dropped.remove(doc_id)
        self._updated.add(run_id)

    def drop(self, run_id: str, *, moved: bool = False) -> None:
        """Remove the run's document; *moved*: it was put into another partition, which is written first."""
        del self.docs()[run_id]
        self._updated.discard(run_id)
        if run_id in self._inserted:
            self._inserted.remove(run_id)
        else:
            (self._moved_out if moved else self._removed).append(self._doc_ids[run_id])

    def write_changes(self) -> None:
        """First phase: updates, inserts and removals (runs moving out are still here)."""
        if self._updated:
            docs = self.docs()
            self._table.update(lambda stored: _replace_all(stored, docs[stored["id"]]),
                               doc_ids=[self._doc_ids[run_id] for run_id in self._updated])
        if self._removed:
            self._table.remove(doc_ids=self._removed)
        if self._inserted:
            self._table.insert_multiple([self._docs[run_id] for run_id in self._inserted])
        self.db.storage.flush()

    def write_moves(self) -> None:
        """Second phase: drop the runs that moved out (their new partitions are on disk by now)."""
        if self._moved_out:
            self._table.remove(doc_ids=self._moved_out)
            self.db.storage.flush()


def _replace_all(stored: dict[str, Any], new: dict[str, Any]) -> None:
    stored.clear()
    stored.update(new)


# --- transactions ------------------------------------------------------------------------------------------------


class Transaction:
    """One locked read-modify-write of the store: what ``RunStore.transaction()`` yields.

    Reads see the files as they are under the lock, plus this transaction's own changes; each partition is
    read only when an operation needs it (``live()`` and a live run's ``get``/``modify`` read the live file
    alone). ``modify`` is the only way to change a stored run: its change function receives the current
    record, so a change is always computed from what it replaces. Changed files are written once each when
    the ``with`` block ends without an exception; callbacks given to ``after_commit`` run after that, still
    under the lock (the run directory's manager.json is kept in step this way).
    """

    def __init__(self, path: Path):
        self.path = path
        self._live = Partition(path)
        self._meta_table = self._live.db.table(META_TABLE, cache_size=0)
        self._meta = dict(self._meta_table.get(doc_id=int(_META_ID)) or {})
        version = self._meta.get("schema_version", 0)
        if version > SCHEMA_VERSION:
            raise StoreError(f"run store {path} has schema version {version}; this dmltui reads up to {SCHEMA_VERSION}: "
                             "upgrade dmltui; nothing was changed")
        self._ended: dict[str, Partition] = {}
        self._all_read = False
        self._on_commit: list[Callable[[], None]] = []
        self._meta_changed = False
        if version < SCHEMA_VERSION and self._live.docs():
            self._migrate()

    # --- partitions --------------------------------------------------------------------------------------------
    def _ended_partition(self, period: str) -> Partition:
        if period not in self._ended:
            self._ended[period] = Partition(partitions_dir(self.path) / f"ended-{period}.json")
        return self._ended[period]

    def _home_of(self, doc: dict[str, Any]) -> Partition:
        return self._live if is_live(doc) else self._ended_partition(period_of(doc["id"]))

    def _read_all(self) -> list[Partition]:
        if not self._all_read:
            for file in sorted(partitions_dir(self.path).glob("ended-*.json")):
                self._ended_partition(file.stem.removeprefix("ended-"))
            self._all_read = True
        return [self._live, *self._ended.values()]

    def _find(self, run_id: str) -> tuple[Partition, dict[str, Any]] | None:
        """The partition and document of a run, from the live file and its month's partition: where a crash mid-move
        left it in both, the higher revision (the other copy is dropped by this transaction)."""
        found = [(partition, doc) for partition in (self._live, self._ended_partition(period_of(run_id)))
                 if (doc := partition.docs().get(run_id)) is not None]
        if len(found) == 2:
            kept, dropped = (found[1], found[0]) if newer(found[1][1], found[0][1]) else (found[0], found[1])
            dropped[0].drop(run_id)
            found = [kept]
        return found[0] if found else None

    def _migrate(self) -> None:
        """Schema 1 or 2 (every run in runs.json, with its config): drop configs kept in run dirs, move ended runs
        to their partitions. Written by this transaction's commit, partitions first."""
        base = self._meta.get("config_base")
        for run_id, doc in list(self._live.docs().items()):
            new = migrated(doc, base)
            home = self._home_of(new)
            home.put(new)
            if home is not self._live:
                self._live.drop(run_id, moved=True)
        self._meta = {"schema_version": SCHEMA_VERSION}
        self._meta_changed = True

    # --- reading -------------------------------------------------------------------------------------------------
    def get(self, run_id: str) -> dict[str, Any] | None:
        """The run's record (a copy: changing it changes nothing), or None."""
        found = self._find(run_id)
        return None if found is None else copy.deepcopy(record_of(found[1]))

    def live(self) -> list[dict[str, Any]]:
        """The records of the live runs (queued, running...), from the live file alone."""
        return [record_of(doc) for doc in self._live.docs().values()]

    def all(self) -> list[dict[str, Any]]:
        """Every run's record (new dicts, whose values are shared with the store's view: change runs with ``modify``)."""
        winners: dict[str, tuple[Partition, dict[str, Any]]] = {}
        for partition in self._read_all():
            for run_id, doc in list(partition.docs().items()):
                seen = winners.get(run_id)
                if seen is None:
                    winners[run_id] = (partition, doc)
                    continue
                # A crash between the two writes of a move: keep the newer copy, drop the other one.
                loser, kept = (seen, (partition, doc)) if newer(doc, seen[1]) else ((partition, doc), seen)
                loser[0].drop(run_id)
                winners[run_id] = kept
        return [record_of(doc) for _, doc in winners.values()]

    def ids(self) -> list[str]:
        return [record["id"] for record in self.all()]

    # --- changing ------------------------------------------------------------------------------------------------
    def insert(self, record: dict[str, Any]) -> None:
        """Add a new run; DuplicateRun when its id is taken."""
        run_id = record["id"]
        if self._find(run_id) is not None:
            raise DuplicateRun(f"run {run_id} is already in the store")
        doc = {**record, REVISION_KEY: 0}
        self._home_of(doc).put(doc)
        self._stamp()

    def modify(self, run_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        """Apply ``change(record)`` to the run's current record; returns the new record. KeyError for an unknown id.

        *change* edits the record it is given (a deep copy) in place, or returns a new one; the store is written
        only when the result differs from what was stored. A run whose state crosses between live and ended
        moves to its new partition."""
        found = self._find(run_id)
        if found is None:
            raise KeyError(run_id)
        source, doc = found
        before = record_of(doc)
        current = copy.deepcopy(before)
        new = change(current)
        new = current if new is None else new
        if new.get("id") != run_id:
            raise ValueError(f"a change may not alter the run id ({run_id!r} -> {new.get('id')!r})")
        if new != before:
            stored = {**new, REVISION_KEY: doc.get(REVISION_KEY, 0) + 1}
            target = self._home_of(stored)
            target.put(stored)
            if target is not source:
                source.drop(run_id, moved=True)
            self._stamp()
        return copy.deepcopy(new)

    def remove(self, run_id: str) -> bool:
        found = self._find(run_id)
        if found is None:
            return False
        found[0].drop(run_id)
        self._stamp()
        return True

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run *callback* once the store's files hold this transaction's changes (still under the lock)."""
        self._on_commit.append(callback)

    def _stamp(self) -> None:
        """Before the first change of a new store: record its schema version."""
        if self._meta.get("schema_version") != SCHEMA_VERSION:
            self._meta["schema_version"] = SCHEMA_VERSION
            self._meta_changed = True

    # --- committing ----------------------------------------------------------------------------------------------
    def _commit(self) -> None:
        """Write every changed file once: ended partitions, then the live file (with the meta document), then
        the files that runs moved out of (their new homes are on disk by then)."""
        if self._meta_changed:
            if self._meta_table.contains(doc_id=int(_META_ID)):
                self._meta_table.update(lambda stored: _replace_all(stored, self._meta), doc_ids=[int(_META_ID)])
            else:
                self._meta_table.insert(Document(self._meta, doc_id=int(_META_ID)))
        for partition in [*self._ended.values(), self._live]:
            partition.write_changes()
        for partition in [*self._ended.values(), self._live]:
            partition.write_moves()
        for callback in self._on_commit:
            callback()


_open_transactions = threading.local()  # store paths with an open transaction in this thread


class RunStore:
    """The run store's files and its one lock. Every operation is one :class:`Transaction`."""

    def __init__(self, path: Path, *, timeout: float = 10.0):
        self.path = Path(path)
        self.lock = FileLock(str(self.path) + ".lock")
        self.timeout = timeout

    @property
    def partitions_dir(self) -> Path:
        return partitions_dir(self.path)

    def files(self) -> list[Path]:
        """The live file and every ended partition that exists."""
        return [self.path, *sorted(self.partitions_dir.glob("ended-*.json"))]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        open_paths = _open_transactions.__dict__.setdefault("paths", set())
        if self.path in open_paths:  # its writes would be lost when the outer one commits
            raise RuntimeError(f"a transaction on {self.path} is already open in this thread")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire(timeout=self.timeout)
        except Timeout:
            raise StoreBusy(f"run store {self.path} is locked by another process (waited {self.timeout:g} s); "
                            "nothing was changed") from None
        open_paths.add(self.path)
        try:
            yield
        finally:
            open_paths.discard(self.path)
            self.lock.release()

    def peek_live(self) -> list[dict[str, Any]]:
        """The live file's records, read without the lock (files are replaced atomically: a consistent, possibly
        older version): what decides, before a transaction, whether squeue must be asked. Empty when unreadable."""
        try:
            data = AtomicJSONStorage(str(self.path)).read() or {}
        except StoreError:
            return []
        return [record_of(doc) for doc in data.get(RUNS_TABLE, {}).values()]

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Lock the store, yield a Transaction; write its changes at the end (nothing on an exception)."""
        with self._locked():
            transaction = Transaction(self.path)
            yield transaction
            transaction._commit()

    # --- one-transaction shorthands ----------------------------------------------------------------------------
    def get(self, run_id: str) -> dict[str, Any] | None:
        with self.transaction() as tx:
            return tx.get(run_id)

    def all(self) -> list[dict[str, Any]]:
        with self.transaction() as tx:
            return tx.all()

    def insert(self, *records: dict[str, Any]) -> None:
        """Add new runs, all or none."""
        with self.transaction() as tx:
            for record in records:
                tx.insert(record)

    def modify(self, run_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        with self.transaction() as tx:
            return tx.modify(run_id, change)

    def remove(self, run_id: str) -> bool:
        with self.transaction() as tx:
            return tx.remove(run_id)

    def snapshot(self, known: dict[Path, tuple[Any, list[dict[str, Any]]]], signature: Callable[[Path], Any]
                 ) -> dict[Path, tuple[Any, list[dict[str, Any]]]]:
        """Each file's (signature, stored documents), under the lock, re-reading only the files whose
        ``signature(path)`` differs from *known*'s: what a watcher (the TUI) polls (:func:`newest_documents` and
        :func:`record_of` turn them into records). Files that are gone are left out."""
        with self._locked():
            current: dict[Path, tuple[Any, list[dict[str, Any]]]] = {}
            for file in self.files():
                mark = signature(file)
                if mark is None:
                    continue
                if file in known and known[file][0] == mark:
                    current[file] = known[file]
                    continue
                storage = AtomicJSONStorage(str(file))
                data = storage.read() or {}
                current[file] = (mark, list(data.get(RUNS_TABLE, {}).values()))
            return current

    def rebuild(self, collect: Callable[[], list[dict[str, Any]]], aside: Path) -> Path | None:
        """Replace the whole store with ``collect()``'s records, under the lock (so no concurrent change is lost
        between reading the run directories and writing). The old files, readable or not, are moved to *aside*
        (made unique with a counter when taken; the partitions' folder to ``<aside>.d``) first, and moved back when
        anything fails; returns where the old live file went (None when there was none)."""
        with self._locked():
            aside = _unused(aside)
            originals = [source for source in (self.path, self.partitions_dir) if source.exists()]
            moves: list[tuple[Path, Path]] = []
            try:
                for source, target in ((self.path, aside), (self.partitions_dir, Path(f"{aside}.d"))):
                    if source in originals:
                        source.rename(target)
                        moves.append((source, target))
                transaction = Transaction(self.path)
                for record in collect():
                    transaction.insert(record)
                transaction._commit()
            except BaseException:
                moved = [source for source, _ in moves]
                # what this rebuild wrote goes; an original that could not be moved aside stays where it is
                if self.path in moved or self.path not in originals:
                    self.path.unlink(missing_ok=True)
                if self.partitions_dir in moved or self.partitions_dir not in originals:
                    shutil.rmtree(self.partitions_dir, ignore_errors=True)
                for source, target in moves:
                    target.rename(source)
                raise
            return aside if self.path in originals else None


def _unused(path: Path) -> Path:
    """*path*, or ``<path>.N`` with the first N for which neither it nor its ``.d`` folder exists."""
    candidate, number = path, 1
    while candidate.exists() or Path(f"{candidate}.d").exists():
        candidate, number = path.with_name(f"{path.name}.{number}"), number + 1
    return candidate
