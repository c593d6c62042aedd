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
operation takes a file lock and opens a fresh TinyDB inside it, whose storage parses the file once
and replaces it atomically (temp file + fsync + rename): a crash never leaves a torn file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from tinydb import Query, TinyDB
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
            atomic_write_text(self.path, json.dumps(self._cache, separators=(",", ":"), check_circular=False))
            self._dirty = False

    def close(self) -> None:
        pass


class _Session:
    """One locked operation on the store: TinyDB tables plus the config base and the schema upgrade."""

    def __init__(self, db: TinyDB, path: Path):
        self.db = db
        self.runs = db.table(RUNS_TABLE, cache_size=0)
        meta_table = db.table(META_TABLE, cache_size=0)
        self.meta = dict(meta_table.get(doc_id=int(_META_ID)) or {})
        version = self.meta.get("schema_version", 0)
        if version > SCHEMA_VERSION:
            raise StoreError(f"run store {path} has schema version {version}; this dmltui reads up to {SCHEMA_VERSION}: "
                             "upgrade dmltui")
        self._meta_table = meta_table

    @property
    def base(self) -> dict[str, Any] | None:
        return self.meta.get("config_base")

    def prepare_write(self) -> dict[str, Any]:
        """Before the first write: record the base and convert an older file; returns the base to pack against."""
        if self.meta.get("schema_version", 0) < SCHEMA_VERSION or not isinstance(self.base, dict):
            self.meta["schema_version"] = SCHEMA_VERSION
            if not isinstance(self.base, dict):
                self.meta["config_base"] = default_config_base()
            self._meta_table.upsert(Document(self.meta, doc_id=int(_META_ID)))
            base = self.base
            self.runs.update(lambda stored: _replace_all(stored, pack(dict(stored), base)))  # one pass over every run
        return self.base

    def doc_ids(self, run_id: str) -> list[int]:
        return [doc.doc_id for doc in self.runs.search(Query().id == run_id)]

    def record(self, doc_id: int) -> dict[str, Any]:
        return unpack(self.runs.get(doc_id=doc_id), self.base)

    def merged(self, doc_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        """The stored document of *doc_id* with *fields* replacing or adding top-level keys (TinyDB's update), packed."""
        base = self.prepare_write()
        return pack({**self.record(doc_id), **fields}, base)


def _replace_all(stored: dict[str, Any], new: dict[str, Any]) -> None:
    stored.clear()
    stored.update(new)


class RunStore:
    def __init__(self, path: Path, *, timeout: float = 10.0):
        self.path = Path(path)
        self.lock = FileLock(str(self.path) + ".lock")
        self.timeout = timeout

    @contextmanager
    def _session(self) -> Iterator[_Session]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.lock.acquire(timeout=self.timeout):
                db = TinyDB(str(self.path), storage=AtomicJSONStorage)
                yield _Session(db, self.path)
                db.storage.flush()
        except Timeout:
            raise StoreBusy(f"run store {self.path} is locked by another process (waited {self.timeout:g} s)") from None

    def put(self, run: dict[str, Any]) -> None:
        """Insert the document of ``run['id']``, or update the existing one with run's fields (TinyDB's upsert)."""
        self.put_many([run])

    def put_many(self, runs: list[dict[str, Any]]) -> None:
        """put() for several runs under one lock and one write."""
        with self._session() as session:
            base = session.prepare_write()
            existing = {doc["id"]: doc.doc_id for doc in session.runs.all()}
            new = []
            for run in runs:
                if run["id"] in existing:
                    doc_id = existing[run["id"]]
                    merged = session.merged(doc_id, run)
                    session.runs.update(lambda stored, merged=merged: _replace_all(stored, merged), doc_ids=[doc_id])
                else:
                    new.append(pack(run, base))
            if new:
                session.runs.insert_multiple(new)

    def update(self, run_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        with self._session() as session:
            doc_ids = session.doc_ids(run_id)
            if not doc_ids:
                raise KeyError(run_id)
            merged = session.merged(doc_ids[0], fields)
            session.runs.update(lambda stored: _replace_all(stored, merged), doc_ids=doc_ids)
            return unpack(merged, session.base)

    def update_many(self, changes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply several runs' field updates under one lock (one read, one write); unknown ids are skipped."""
        with self._session() as session:
            by_id = {doc["id"]: doc.doc_id for doc in session.runs.all()}
            updated = {by_id[run_id]: session.merged(by_id[run_id], fields) for run_id, fields in changes.items()
                       if run_id in by_id}
            for doc_id, new in updated.items():
                session.runs.update(lambda stored, new=new: _replace_all(stored, new), doc_ids=[doc_id])
            return [unpack(new, session.base) for new in updated.values()]

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self._session() as session:
            doc_ids = session.doc_ids(run_id)
            return session.record(doc_ids[0]) if doc_ids else None

    def all(self) -> list[dict[str, Any]]:
        with self._session() as session:
            return [unpack(doc, session.base) for doc in session.runs.all()]

    def remove(self, run_id: str) -> bool:
        with self._session() as session:
            return bool(session.runs.remove(Query().id == run_id))
