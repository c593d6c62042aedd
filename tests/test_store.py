"""The run store: concurrent writers lose nothing, a corrupt file is an error that changes nothing."""

from __future__ import annotations

import copy
import json
import multiprocessing
from pathlib import Path

import pytest
from conftest import dmltui

from dmltui.store import (
    PACKED_CONFIG_KEY,
    SCHEMA_VERSION,
    DuplicateRun,
    RunStore,
    StoreBusy,
    StoreError,
    default_config_base,
)


def _config(seed: int, defaults: dict | None = None) -> dict:
    config = copy.deepcopy(defaults) if defaults else default_config_base()
    config["run"]["seed"] = seed
    config["optim"]["lr"] = 3e-5
    config["loss"]["name"] = "triplet"
    return config


def _writer(path: str, worker: int, count: int, defaults: dict) -> None:
    store = RunStore(Path(path), timeout=60)
    for i in range(count):
        run = {"id": f"w{worker}-{i}", "state": "queued", "worker": worker}
        if i % 10 == 0:
            run["config"] = _config(worker * 1000 + i, defaults)
        store.insert(run)
        if i % 5 == 0:
            store.modify(f"w{worker}-{i}", lambda record: record.update(state="finished"))


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "runs.json"
    workers, count = 16, 50
    context = multiprocessing.get_context("spawn")
    defaults = default_config_base()  # (made here: importing pydantic in 16 processes at once takes long)
    processes = [context.Process(target=_writer, args=(str(path), w, count, defaults)) for w in range(workers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
        assert p.exitcode == 0
    runs = RunStore(path).all()
    assert len(runs) == workers * count
    assert sum(r["state"] == "finished" for r in runs) == workers * len(range(0, count, 5))
    with_config = [r for r in runs if "config" in r]
    assert len(with_config) == workers * len(range(0, count, 10))
    assert all(r["config"] == _config(r["worker"] * 1000 + int(r["id"].split("-")[1])) for r in with_config)
    data = json.loads(path.read_text())  # still one valid JSON document
    assert data["meta"]["1"]["schema_version"] == SCHEMA_VERSION
    assert not list(tmp_path.glob(".tmp-*"))


def test_insert_get_modify_remove(tmp_path):
    store = RunStore(tmp_path / "runs.json")
    store.insert({"id": "a", "state": "queued", "best": {}})
    with pytest.raises(DuplicateRun, match="run a is already in the store"):
        store.insert({"id": "a", "state": "running", "best": {}})
    assert [r["state"] for r in store.all()] == ["queued"]
    assert store.modify("a", lambda r: r.update(state="finished"))["state"] == "finished"
    assert store.modify("a", lambda r: {**r, "epoch": 3})["epoch"] == 3  # or a new record returned
    with pytest.raises(KeyError):
        store.modify("missing", lambda r: r.update(state="x"))
    with pytest.raises(ValueError, match="may not alter the run id"):
        store.modify("a", lambda r: r.update(id="b"))
    assert store.get("missing") is None
    assert store.remove("a") and store.all() == []


def test_a_failed_transaction_writes_nothing_and_an_unchanged_one_does_not_write(tmp_path):
    path = tmp_path / "runs.json"
    store = RunStore(path)
    store.insert({"id": "a", "tags": ["x"]}, {"id": "b", "tags": []})
    before = path.read_bytes(), path.stat().st_ino
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        tx.modify("a", lambda r: r["tags"].append("y"))
        tx.insert({"id": "c"})
        tx.remove("b")
        raise RuntimeError("boom")
    assert (path.read_bytes(), path.stat().st_ino) == before
    with store.transaction() as tx:
        tx.modify("a", lambda r: r.update(tags=["x"]))  # the same value: no write
        assert tx.get("a")["tags"] == ["x"]
    assert (path.read_bytes(), path.stat().st_ino) == before
    with store.transaction() as tx:  # reads see the transaction's own changes
        tx.modify("a", lambda r: r["tags"].append("y"))
        tx.insert({"id": "c", "tags": []})
        tx.modify("c", lambda r: r["tags"].append("new"))
        assert tx.get("a")["tags"] == ["x", "y"] and tx.get("c")["tags"] == ["new"] and tx.ids() == ["a", "b", "c"]
        record = tx.get("a")
        record["tags"].append("not stored")  # a copy
    assert [r["tags"] for r in store.all()] == [["x", "y"], [], ["new"]]


def test_a_nested_transaction_in_one_thread_is_refused(tmp_path):
    store = RunStore(tmp_path / "runs.json")
    with store.transaction(), pytest.raises(RuntimeError, match="already open"):
        RunStore(tmp_path / "runs.json").all()  # its write would be lost when the outer one commits
    assert store.all() == []


def test_after_commit_runs_under_the_lock_only_after_a_commit(tmp_path):
    store = RunStore(tmp_path / "runs.json", timeout=0.2)
    calls = []
    with store.transaction() as tx:
        tx.insert({"id": "a"})
        tx.after_commit(lambda: calls.append(store.lock.is_locked))
    assert calls == [True]
    with pytest.raises(KeyError), store.transaction() as tx:
        tx.after_commit(lambda: calls.append("never"))
        tx.modify("missing", lambda r: None)
    assert calls == [True]


# --- random interleavings --------------------------------------------------------------------------------------

OPERATIONS = ("add", "remove", "note", "count", "insert", "delete")


def _journal(path: str, entry: str) -> None:
    with open(path, "a") as handle:
        handle.write(entry + "\n")


def _interleaver(path: str, journal: str, worker: int, steps: int, seed: int) -> None:
    """Random operations with random pauses inside and outside the lock; each committed one is journalled
    (after its commit, under the lock), so the journal is the order the store serialised them in."""
    import random
    import time

    rng = random.Random(seed)
    store = RunStore(Path(path), timeout=60)
    for step in range(steps):
        operation = rng.choice(OPERATIONS)
        value = f"w{worker}-{step}"
        time.sleep(rng.random() * 0.01)
        with store.transaction() as tx:
            time.sleep(rng.random() * 0.005)  # a slow writer holds the lock: the others must wait, not overwrite
            run_id = rng.choice(tx.ids())
            if operation == "insert":
                run_id = value
                tx.insert({"id": run_id, "tags": [], "notes": "", "count": 0})
            elif operation == "delete":
                if run_id.startswith("r"):  # the four first runs stay
                    continue
                tx.remove(run_id)
            elif operation == "add":
                tx.modify(run_id, lambda r, value=value: r["tags"].append(value))
            elif operation == "remove":
                victim = (tx.get(run_id)["tags"] or [None])[0]
                tx.modify(run_id, lambda r, victim=victim: r.update(tags=[t for t in r["tags"] if t != victim]))
                value = victim
            elif operation == "note":
                tx.modify(run_id, lambda r, value=value: r.update(notes=value))
            elif operation == "count":
                tx.modify(run_id, lambda r: r.update(count=r["count"] + 1))
            entry = json.dumps([operation, run_id, value])
            tx.after_commit(lambda entry=entry: _journal(journal, entry))


def _replay(journal: list[list]) -> dict[str, dict]:
    """The journal applied in order, one operation at a time: what a serial execution gives."""
    runs = {f"r{i}": {"tags": [], "notes": "", "count": 0} for i in range(4)}
    for operation, run_id, value in journal:
        run = runs.get(run_id)
        if operation == "insert":
            runs[run_id] = {"tags": [], "notes": "", "count": 0}
        elif operation == "add":
            run["tags"].append(value)
        elif operation == "remove":
            run["tags"] = [t for t in run["tags"] if t != value]
        elif operation == "note":
            run["notes"] = value
        elif operation == "count":
            run["count"] += 1
        elif operation == "delete":
            del runs[run_id]
    return runs


@pytest.mark.parametrize("seed", [1, 2])
def test_random_interleavings_end_as_their_serial_order(tmp_path, seed):
    path, journal = tmp_path / "runs.json", tmp_path / "journal.jsonl"
    RunStore(path).insert(*({"id": f"r{i}", "tags": [], "notes": "", "count": 0} for i in range(4)))
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_interleaver, args=(str(path), str(journal), w, 30, seed * 100 + w)) for w in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len(entries) > 100 and {e[0] for e in entries} == set(OPERATIONS)
    stored = {r["id"]: {k: r[k] for k in ("tags", "notes", "count")} for r in RunStore(path).all()}
    assert stored == _replay(entries)
    assert sum(r["count"] for r in stored.values()) >= 1


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


def _v1_file(path: Path, runs: list[dict]) -> None:
    """A store as dmltui wrote it before schema 2: full configs in every document."""
    documents = {str(i + 1): run for i, run in enumerate(runs)}
    path.write_text(json.dumps({"meta": {"1": {"schema_version": 1}}, "runs": documents}, separators=(",", ":")))


def _runs(count: int) -> list[dict]:
    runs = []
    for i in range(count):
        config = _config(i)
        if i % 3 == 1:  # keys the defaults lack, a removed key, changed types, a list, a section replaced by a scalar
            config["optim"]["extra"] = {"nested": [1, 2.5, None]}
            del config["data"]["cache"]
            config["run"]["gpus"] = [0, 1]
            config["model"]["embed_dim"] = float(config["model"]["embed_dim"])
            config["run"]["deterministic"] = int(config["run"]["deterministic"])
            config["miner"] = "none"
        runs.append({"id": f"run-{i}", "name": f"r{i}", "state": "finished", "config": config,
                     "best": {"test/e_recall@1": {"value": 0.5 + i / 100, "epoch": i}}, "tags": ["t"], "notes": ""})
    return runs


def _exact(records: list[dict]) -> str:
    """Records as text with key order and value types: equal only if they are identical."""
    return json.dumps(records)


def test_version_1_files_are_read_as_they_are_and_converted_on_the_first_write(tmp_path):
    path = tmp_path / "runs.json"
    runs = _runs(6)
    _v1_file(path, runs)
    before = path.read_text()
    store = RunStore(path)
    assert _exact(store.all()) == _exact(runs)
    assert _exact([store.get("run-4")]) == _exact([runs[4]])
    assert path.read_text() == before  # reading never rewrites the file
    updated = store.modify("run-1", lambda r: r.update(notes="converted"))
    assert _exact([updated]) == _exact([{**runs[1], "notes": "converted"}])
    data = json.loads(path.read_text())
    assert data["meta"]["1"]["schema_version"] == SCHEMA_VERSION == 2
    assert data["meta"]["1"]["config_base"] == default_config_base()
    assert all("config" not in doc and PACKED_CONFIG_KEY in doc for doc in data["runs"].values())
    assert len(path.read_text()) < len(before) / 3
    runs[1]["notes"] = "converted"
    assert _exact(store.all()) == _exact(runs)


def test_records_round_trip_exactly_through_compact_configs(tmp_path):
    path = tmp_path / "runs.json"
    store = RunStore(path)
    runs = _runs(6)
    runs.append({"id": "no-config", "state": "queued"})
    runs.append({"id": "odd-config", "state": "queued", "config": None})
    runs.append({"id": "defaults", "state": "queued", "config": default_config_base()})
    store.insert(*copy.deepcopy(runs))
    assert _exact(store.all()) == _exact(runs)
    assert _exact([store.get("run-1")]) == _exact([runs[1]])
    stored = json.loads(path.read_text())["runs"]
    assert stored["9"][PACKED_CONFIG_KEY] == {"set": []}  # the defaults: nothing but the marker
    defaults = default_config_base()
    assert stored["1"][PACKED_CONFIG_KEY]["set"] == [  # only what differs from the defaults, in the config's order
        [[section, key], value] for section, values in runs[0]["config"].items() for key, value in values.items()
        if defaults[section][key] != value]
    assert len(stored["1"][PACKED_CONFIG_KEY]["set"]) in (2, 3)  # seed, lr, loss name

    # a new config replaces the old one; other changes leave it alone; modify returns full records
    runs[0]["config"] = _config(99)
    assert store.modify("run-0", lambda r: r.update(config=copy.deepcopy(runs[0]["config"])))["config"] == runs[0]["config"]
    with store.transaction() as tx:
        changed = [tx.modify("run-2", lambda r: r.update(state="crashed")), tx.modify("run-3", lambda r: r.update(epoch=3))]
    runs[2]["state"], runs[3]["epoch"] = "crashed", 3
    assert _exact(changed) == _exact([runs[2], runs[3]])
    assert _exact(store.all()) == _exact(runs)

    # every read gives independent objects
    first, second = store.all()[:2]
    first["config"]["optim"]["lr"] = 1.0
    assert second["config"]["optim"]["lr"] == 3e-5 and store.get("run-0")["config"]["optim"]["lr"] == 3e-5

    # still a TinyDB database
    from tinydb import TinyDB

    with TinyDB(str(path)) as db:
        assert [doc["id"] for doc in db.table("runs").all()] == [run["id"] for run in runs]
        assert db.table("meta").get(doc_id=1)["schema_version"] == SCHEMA_VERSION
    assert store.remove("run-4") and not store.remove("run-4")
    del runs[4]
    assert _exact(store.all()) == _exact(runs)


def test_a_config_that_would_not_round_trip_is_stored_whole(tmp_path):
    path = tmp_path / "runs.json"
    store = RunStore(path)
    config = default_config_base()
    config = {"run": config.pop("run"), **config}  # same keys, another order: kept as it is
    store.insert({"id": "a", "config": config})
    assert _exact([store.get("a")["config"]]) == _exact([config])
    assert "config" in json.loads(path.read_text())["runs"]["1"]


def test_packed_configs_without_a_base_are_an_error(tmp_path):
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"meta": {"1": {"schema_version": 2}}, "runs": {"1": {"id": "a", PACKED_CONFIG_KEY: {"set": []}}}}))
    with pytest.raises(StoreError, match="no config_base"):
        RunStore(path).all()


def test_print_json_is_compact_when_piped_and_indented_on_a_terminal(monkeypatch, capsys):
    from dmltui.cli.common import print_json

    data = {"b": [1, {"x": None}], "a": Path("p")}
    print_json(data)
    assert capsys.readouterr().out == '{"a": "p", "b": [1, {"x": null}]}\n'
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    print_json(data)
    assert capsys.readouterr().out == json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"

