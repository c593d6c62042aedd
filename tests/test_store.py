"""The run store: concurrent writers lose nothing, a corrupt file is an error that changes nothing."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from conftest import dmltui

from dmltui.store import SCHEMA_VERSION, RunStore, StoreBusy, StoreError


def _writer(path: str, worker: int, count: int) -> None:
    store = RunStore(Path(path), timeout=60)
    for i in range(count):
        store.put({"id": f"w{worker}-{i}", "state": "queued", "worker": worker})
        if i % 5 == 0:
            store.update(f"w{worker}-{i}", {"state": "finished"})


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "runs.json"
    workers, count = 16, 50
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(str(path), w, count)) for w in range(workers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
        assert p.exitcode == 0
    runs = RunStore(path).all()
    assert len(runs) == workers * count
    assert sum(r["state"] == "finished" for r in runs) == workers * len(range(0, count, 5))
    data = json.loads(path.read_text())  # still one valid JSON document
    assert data["meta"]["1"]["schema_version"] == SCHEMA_VERSION
    assert not list(tmp_path.glob(".tmp-*"))


def test_put_get_update_remove(tmp_path):
    store = RunStore(tmp_path / "runs.json")
    store.put({"id": "a", "state": "queued", "best": {}})
    store.put({"id": "a", "state": "running", "best": {}})  # upsert, not a duplicate
    assert [r["state"] for r in store.all()] == ["running"]
    assert store.update("a", {"state": "finished"})["state"] == "finished"
    with pytest.raises(KeyError):
        store.update("missing", {"state": "x"})
    assert store.get("missing") is None
    assert store.remove("a") and store.all() == []


def test_corrupt_store_is_a_clear_error_and_is_left_as_is(tmp_path):
    path = tmp_path / "runs.json"
    path.write_text('{"runs": {"1": {"id": "a"')
    with pytest.raises(StoreError, match=r"runs.json is corrupt \(line 1: .*\); nothing was changed"):
        RunStore(path).all()
    assert path.read_text() == '{"runs": {"1": {"id": "a"'


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"meta": {"1": {"schema_version": SCHEMA_VERSION + 1}}, "runs": {}}))
    with pytest.raises(StoreError, match="upgrade dmltui"):
        RunStore(path).all()


def test_a_held_lock_means_busy(tmp_path):
    store = RunStore(tmp_path / "runs.json", timeout=0.2)
    other = RunStore(tmp_path / "runs.json")
    with other.lock:
        with pytest.raises(StoreBusy, match="locked by another process"):
            store.all()


def test_cli_reports_a_corrupt_store_with_exit_1(isolated_env):
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "runs.json").write_text("not json")
    result = dmltui("runs", "list")
    assert result.returncode == 1
    assert result.stderr.startswith("error: run store ") and "is corrupt" in result.stderr
    assert (isolated_env / "runs.json").read_text() == "not json"


def test_cli_runs_show_unknown_id_is_not_found():
    result = dmltui("runs", "show", "nope", "--json")
    assert result.returncode == 3 and "no run with id 'nope'" in result.stderr
