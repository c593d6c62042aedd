"""The run store: one TinyDB document per run, summaries only (per-epoch series stay in run dirs).

TinyDB rewrites its whole file on every write and concurrent writers corrupt it,
so every access takes a file lock and opens a fresh TinyDB inside it, and the
storage writes through a temp file + rename, so a crash never leaves a torn file.
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

from engine.io import atomic_write_text

SCHEMA_VERSION = 1
RUNS_TABLE = "runs"
META_TABLE = "meta"


class StoreError(RuntimeError):
    """The store file cannot be used (corrupt, newer schema); nothing was changed."""


class StoreBusy(StoreError):
    """Another process held the store's lock for longer than the timeout."""


class AtomicJSONStorage(Storage):
    """TinyDB storage that reads a JSON file and replaces it atomically on write.

    One instance lives for one locked operation, so the file cannot change under it: the
    parsed content is kept after the first read (TinyDB reads the whole file per call).
    """

    def __init__(self, path: str):
        self.path = Path(path)
        self._cache: dict[str, Any] | None = None

    def read(self) -> dict[str, Any] | None:
        if self._cache is None:
            self._cache = self._read_file()
        return self._cache

    def _read_file(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise StoreError(
                f"run store {self.path} is corrupt (line {error.lineno}: {error.msg}); nothing was changed. "
                "Move it aside and run `dmltui db rebuild` to re-create it from the run directories"
            ) from None
        if not isinstance(data, dict):
            raise StoreError(f"run store {self.path} is not a TinyDB file (top level is {type(data).__name__})")
        return data

    def write(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.path, json.dumps(data, separators=(",", ":")))
        self._cache = data

    def close(self) -> None:
        pass


class RunStore:
    def __init__(self, path: Path, *, timeout: float = 10.0):
        self.path = Path(path)
        self.lock = FileLock(str(self.path) + ".lock")
        self.timeout = timeout

    @contextmanager
    def _db(self) -> Iterator[TinyDB]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.lock.acquire(timeout=self.timeout):
                db = TinyDB(str(self.path), storage=AtomicJSONStorage)
                try:
                    self._check_schema(db)
                    yield db
                finally:
                    db.close()
        except Timeout:
            raise StoreBusy(f"run store {self.path} is locked by another process (waited {self.timeout:g} s)") from None

    @staticmethod
    def _check_schema(db: TinyDB) -> None:
        meta = db.table(META_TABLE)
        record = meta.get(doc_id=1)
        if record is None:
            meta.insert({"schema_version": SCHEMA_VERSION})
        elif record.get("schema_version", 0) > SCHEMA_VERSION:
            raise StoreError(
                f"run store {db.storage.path} has schema version {record['schema_version']}; "
                f"this dmltui reads up to {SCHEMA_VERSION}: upgrade dmltui"
            )

    def put(self, run: dict[str, Any]) -> None:
        """Insert or replace the document of ``run['id']``."""
        with self._db() as db:
            db.table(RUNS_TABLE).upsert(run, Query().id == run["id"])

    def update(self, run_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        with self._db() as db:
            table = db.table(RUNS_TABLE)
            if not table.update(fields, Query().id == run_id):
                raise KeyError(run_id)
            return dict(table.get(Query().id == run_id))

    def update_many(self, changes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply several runs' field updates under one lock (one read, one write); unknown ids are skipped."""
        with self._db() as db:
            table = db.table(RUNS_TABLE)
            updated = []
            for run_id, fields in changes.items():
                if table.update(fields, Query().id == run_id):
                    updated.append(dict(table.get(Query().id == run_id)))
            return updated

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            found = db.table(RUNS_TABLE).get(Query().id == run_id)
            return dict(found) if found else None

    def all(self) -> list[dict[str, Any]]:
        with self._db() as db:
            return [dict(doc) for doc in db.table(RUNS_TABLE).all()]

    def remove(self, run_id: str) -> bool:
        with self._db() as db:
            return bool(db.table(RUNS_TABLE).remove(Query().id == run_id))
