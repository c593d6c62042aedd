"""The run store: one TinyDB document per run, summaries only (per-epoch series stay in run dirs).

The file is a TinyDB database::

    {"meta": {"1": {"schema_version": 2, "config_base": {...}}},
     "runs": {"1": {"id": "...", "config_diff": {"set": [[["optim", "lr"], 0.01], ...], "del": [...]}, ...}, ...}}

Schema 2 stores each run's resolved config as its difference from ``config_base`` (the
``engine.config.schema.Config`` defaults when the base was recorded): a full config is ~100 keys, so
this keeps the file several times smaller (0.9 instead of 5.6 MB at 2,000 runs). Reads expand it
back: callers always get full records with a ``config`` key. Version-1 files (full configs) are read
as they are and converted on the first write.

TinyDB rewrites its whole file on every write and concurrent writers would lose updates, so every
operation is a :class:`Transaction`: it takes a file lock, opens a fresh TinyDB inside it, reads, lets
the caller change records *from what it reads there*, and replaces the file once, atomically (temp file
+ fsync + rename), before the lock is released. There is no way to write fields computed outside the
lock: ``modify`` hands the change function the current record. An operation that fails writes
nothing, and a crash never leaves a torn file.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Document

from engine.io import atomic_write_text

SCHEMA_VERSION = 2
RUNS_TABLE = "runs"
META_TABLE = "meta"
CONFIG_KEY = "config"
PACKED_CONFIG_KEY = "config_diff"  # in a stored document, in place of CONFIG_KEY: the config's difference from the base
_META_ID = "1"  # TinyDB document id of the one meta document


class StoreError(RuntimeError):
    """The store file cannot be used (corrupt, newer schema); nothing was changed."""


class StoreBusy(StoreError):
    """Another process held the store's lock for longer than the timeout."""


class DuplicateRun(StoreError):
    """A new run's id is already in the store."""


# --- compact configs -------------------------------------------------------------------------------------------


def default_config_base() -> dict[str, Any]:
    """The base new stores diff configs against: the engine's defaults (imports pydantic; once per store file)."""
    from engine.config.schema import Config

    return json.loads(json.dumps(Config().to_dict()))  # as it will read back from the file


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _diff_into(base: dict[str, Any], value: dict[str, Any], path: list[str], sets: list, dels: list) -> None:
    for key, item in value.items():
        if key in base:
            old = base[key]
            if type(old) is dict and type(item) is dict:
                _diff_into(old, item, [*path, key], sets, dels)
                continue
            if _same(old, item):
                continue
        sets.append([[*path, key], item])
    dels.extend([*path, key] for key in base if key not in value)


def _fresh(node: Any) -> Any:
    """A copy of parsed JSON: new dicts and lists, the same (immutable) strings and numbers."""
    if type(node) is dict:
        return {key: _fresh(value) if type(value) is dict or type(value) is list else value for key, value in node.items()}
    return [_fresh(value) if type(value) is dict or type(value) is list else value for value in node]


def expand_config(base: dict[str, Any], diff: dict[str, Any]) -> dict[str, Any]:
    """The full config of a stored ``config_diff``: a new object that shares no dict or list with *base*."""
    config = _fresh(base)
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


def diff_config(base: dict[str, Any], config: dict[str, Any]) -> dict[str, Any] | None:
    """*config* as changes to *base*, or None where that would not give back exactly *config* (key order included)."""
    sets: list = []
    dels: list = []
    _diff_into(base, config, [], sets, dels)
    diff = {"set": sets, "del": dels} if dels else {"set": sets}
    try:
        expected = json.dumps(config)
        stored = json.loads(json.dumps(diff))  # what a read will see (tuples are lists, keys are strings...)
        return diff if json.dumps(expand_config(base, stored)) == expected else None
    except (KeyError, TypeError, ValueError):
        return None


def unpack(doc: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    """A stored document as a full record (a new dict; the config back in CONFIG_KEY's place)."""
    if PACKED_CONFIG_KEY not in doc:
        return dict(doc)
    if not isinstance(base, dict):
        raise StoreError("the run store has packed configs but no config_base: it is damaged. "
                         "Move it aside and run `dmltui db rebuild` to re-create it from the run directories")
    return {(CONFIG_KEY if key == PACKED_CONFIG_KEY else key): (expand_config(base, value) if key == PACKED_CONFIG_KEY else value)
            for key, value in doc.items()}


def pack(record: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """A record as stored: its config as a diff against *base* (kept whole where a diff would not round-trip)."""
    config = record.get(CONFIG_KEY)
    diff = diff_config(base, config) if type(config) is dict else None
    if diff is None:
        return dict(record)
    return {(PACKED_CONFIG_KEY if key == CONFIG_KEY else key): (diff if key == CONFIG_KEY else value) for key, value in record.items()}


class AtomicJSONStorage(Storage):
    """TinyDB storage for one locked operation: parses the file once, keeps TinyDB's writes in memory, and
    ``flush()`` replaces the file atomically once at the end (an operation that fails writes nothing)."""

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
                atomic_write_text(self.path, json.dumps(self._cache, separators=(",", ":"), check_circular=False))
            except OSError as error:  # a full disk, a read-only mount: the old file is untouched (atomic write)
                raise StoreError(f"run store {self.path} could not be written ({error.strerror or error}); "
                                 "nothing was changed") from None
            self._dirty = False

    def close(self) -> None:
        pass


class Transaction:
    """One locked read-modify-write of the store: what ``RunStore.transaction()`` yields.

    Reads see the file as it is under the lock, plus this transaction's own changes. ``modify`` is the
    only way to change a stored run: its change function receives the current record, so a change is
    always computed from what it replaces. The file is written once, when the ``with`` block ends without
    an exception, and only when something changed; callbacks given to ``after_commit`` run after that,
    still under the lock (the run directory's manager.json is kept in step this way).
    """

    def __init__(self, db: TinyDB, path: Path):
        self.path = path
        self._runs = db.table(RUNS_TABLE, cache_size=0)
        self._meta_table = db.table(META_TABLE, cache_size=0)
        self._meta = dict(self._meta_table.get(doc_id=int(_META_ID)) or {})
        version = self._meta.get("schema_version", 0)
        if version > SCHEMA_VERSION:
            raise StoreError(f"run store {path} has schema version {version}; this dmltui reads up to {SCHEMA_VERSION}: "
                             "upgrade dmltui; nothing was changed")
        self._docs: dict[str, dict[str, Any]] | None = None  # run id -> stored (packed) document, this transaction's view
        self._doc_ids: dict[str, int] = {}
        self._changed: set[str] = set()
        self._inserted: list[str] = []
        self._removed: list[int] = []
        self._on_commit: list[Callable[[], None]] = []
        self._meta_changed = False

    # --- reading ---------------------------------------------------------------------------------------------
    def _view(self) -> dict[str, dict[str, Any]]:
        if self._docs is None:
            documents = self._runs.all()
            self._docs = {doc["id"]: doc for doc in documents}
            self._doc_ids = {doc["id"]: doc.doc_id for doc in documents}
        return self._docs

    @property
    def _base(self) -> dict[str, Any] | None:
        return self._meta.get("config_base")

    def get(self, run_id: str) -> dict[str, Any] | None:
        """The run's full record (a copy: changing it changes nothing), or None."""
        doc = self._view().get(run_id)
        return None if doc is None else copy.deepcopy(unpack(doc, self._base))

    def all(self) -> list[dict[str, Any]]:
        """Every run's full record. Shallow copies, for speed with thousands of runs: change runs with ``modify``."""
        return [unpack(doc, self._base) for doc in self._view().values()]

    def ids(self) -> list[str]:
        return list(self._view())

    # --- changing --------------------------------------------------------------------------------------------
    def _packing_base(self) -> dict[str, Any]:
        """Before the first change: record the config base (new or older files); returns the base to pack against."""
        if self._meta.get("schema_version", 0) < SCHEMA_VERSION or not isinstance(self._base, dict):
            self._meta["schema_version"] = SCHEMA_VERSION
            if not isinstance(self._base, dict):
                self._meta["config_base"] = default_config_base()
            view = self._view()
            for run_id, doc in view.items():  # an older file: every document is converted
                view[run_id] = pack(unpack(doc, None), self._base)
                self._changed.add(run_id)
            self._meta_changed = True
        return self._base

    def insert(self, record: dict[str, Any]) -> None:
        """Add a new run; DuplicateRun when its id is taken."""
        run_id = record["id"]
        view = self._view()
        if run_id in view:
            raise DuplicateRun(f"run {run_id} is already in the store")
        view[run_id] = pack(record, self._packing_base())
        self._inserted.append(run_id)

    def modify(self, run_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        """Apply ``change(record)`` to the run's current record; returns the new record. KeyError for an unknown id.

        *change* edits the record it is given (a deep copy) in place, or returns a new one; the store is written
        only when the result differs from what was stored."""
        view = self._view()
        if run_id not in view:
            raise KeyError(run_id)
        before = unpack(view[run_id], self._base)
        current = copy.deepcopy(before)
        new = change(current)
        new = current if new is None else new
        if new.get("id") != run_id:
            raise ValueError(f"a change may not alter the run id ({run_id!r} -> {new.get('id')!r})")
        if new != before:
            view[run_id] = pack(new, self._packing_base())
            self._changed.add(run_id)
        return copy.deepcopy(new)

    def remove(self, run_id: str) -> bool:
        view = self._view()
        if run_id not in view:
            return False
        del view[run_id]
        self._changed.discard(run_id)
        if run_id in self._inserted:
            self._inserted.remove(run_id)
        else:
            self._removed.append(self._doc_ids[run_id])
        return True

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run *callback* once the store file holds this transaction's changes (still under the lock)."""
        self._on_commit.append(callback)

    # --- committing ------------------------------------------------------------------------------------------
    def _write(self) -> bool:
        """Hand the changes to TinyDB (one update, one removal, one insert); True when there were any."""
        if self._meta_changed:
            self._meta_table.upsert(Document(self._meta, doc_id=int(_META_ID)))
        view = self._docs or {}
        changed = {run_id for run_id in self._changed if run_id in self._doc_ids}
        if changed:
            self._runs.update(lambda stored: _replace_all(stored, view[stored["id"]]),
                              doc_ids=[self._doc_ids[run_id] for run_id in changed])
        if self._removed:
            self._runs.remove(doc_ids=self._removed)
        if self._inserted:
            self._runs.insert_multiple([view[run_id] for run_id in self._inserted])
        return bool(changed or self._removed or self._inserted or self._meta_changed)


def _replace_all(stored: dict[str, Any], new: dict[str, Any]) -> None:
    stored.clear()
    stored.update(new)


_open_transactions = threading.local()  # store paths with an open transaction in this thread


class RunStore:
    """The run store file and its lock. Every operation is one :class:`Transaction`."""

    def __init__(self, path: Path, *, timeout: float = 10.0):
        self.path = Path(path)
        self.lock = FileLock(str(self.path) + ".lock")
        self.timeout = timeout

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

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Lock the store, read it, yield a Transaction; write its changes at the end (nothing on an exception)."""
        with self._locked():
            db = TinyDB(str(self.path), storage=AtomicJSONStorage)
            transaction = Transaction(db, self.path)
            yield transaction
            if transaction._write():
                db.storage.flush()
            for callback in transaction._on_commit:
                callback()

    # --- one-transaction shorthands --------------------------------------------------------------------------
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

    def rebuild(self, collect: Callable[[], list[dict[str, Any]]], aside: Path) -> Path | None:
        """Replace the whole store with ``collect()``'s records, under the lock (so no concurrent change is lost
        between reading the run directories and writing). The old file, readable or not, is moved to *aside*
        first and moved back when *collect* fails; returns where it went (None when there was none)."""
        with self._locked():
            moved = None
            if self.path.exists():
                self.path.rename(aside)
                moved = aside
            try:
                records = collect()
                db = TinyDB(str(self.path), storage=AtomicJSONStorage)
                transaction = Transaction(db, self.path)
                for record in records:
                    transaction.insert(record)
                transaction._write()
                db.storage.flush()
            except BaseException:
                self.path.unlink(missing_ok=True)
                if moved is not None:
                    moved.rename(self.path)
                raise
            return moved
