"""The run store: concurrent writers lose nothing, a corrupt file is an error that changes nothing."""

from __future__ import annotations

import copy
import json
import multiprocessing
from pathlib import Path

import pytest
from conftest import dmltui

from dmltui.store import SCHEMA_VERSION, DuplicateRun, RunStore, StoreBusy, StoreError, partitions_dir

DEFAULTS = {"run": {"seed": 0, "device": "auto"}, "optim": {"lr": 1e-5, "epochs": 150}, "loss": {"name": "margin"},
            "data": {"dataset": "cub200", "cache": "off"}, "model": {"embed_dim": 128}, "miner": {"name": "distance"}}


def _config(seed: int) -> dict:
    config = copy.deepcopy(DEFAULTS)
    config["run"]["seed"] = seed
    config["optim"]["lr"] = 3e-5
    config["loss"]["name"] = "triplet"
    return config


def _writer(path: str, worker: int, count: int) -> None:
    store = RunStore(Path(path), timeout=60)
    for i in range(count):
        run = {"id": f"2026110{worker % 3 + 1}-000000-w{worker}-{i}", "state": "queued", "worker": worker}
        if i % 10 == 0:
            run["extra"] = _config(worker * 1000 + i)
        store.insert(run)
        if i % 5 == 0:
            store.modify(run["id"], lambda record: record.update(state="finished"))  # moves to its month's partition


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
    with_extra = [r for r in runs if "extra" in r]
    assert len(with_extra) == workers * len(range(0, count, 10))
    assert all(r["extra"] == _config(r["worker"] * 1000 + int(r["id"].rsplit("-")[-1])) for r in with_extra)
    data = json.loads(path.read_text())  # each file is still one valid JSON document
    assert data["meta"]["1"]["schema_version"] == SCHEMA_VERSION
    assert len(data["runs"]) == workers * count - workers * len(range(0, count, 5))  # the live ones
    ended = sorted(p.name for p in partitions_dir(path).iterdir())
    assert ended == ["ended-202611.json"]
    assert len(json.loads((partitions_dir(path) / ended[0]).read_text())["runs"]) == workers * len(range(0, count, 5))
    assert not list(tmp_path.glob("**/.tmp-*"))


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

OPERATIONS = ("add", "remove", "note", "count", "insert", "delete", "end", "reopen")  # end/reopen move runs between files


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
                tx.insert({"id": run_id, "tags": [], "notes": "", "count": 0, "state": "queued"})
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
            elif operation in ("end", "reopen"):
                state = "finished" if operation == "end" else "queued"
                tx.modify(run_id, lambda r, state=state: r.update(state=state))
            entry = json.dumps([operation, run_id, value])
            tx.after_commit(lambda entry=entry: _journal(journal, entry))


def _replay(journal: list[list]) -> dict[str, dict]:
    """The journal applied in order, one operation at a time: what a serial execution gives."""
    runs = {f"r{i}": {"tags": [], "notes": "", "count": 0, "state": "queued"} for i in range(4)}
    for operation, run_id, value in journal:
        run = runs.get(run_id)
        if operation == "insert":
            runs[run_id] = {"tags": [], "notes": "", "count": 0, "state": "queued"}
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
        elif operation in ("end", "reopen"):
            run["state"] = "finished" if operation == "end" else "queued"
    return runs


@pytest.mark.parametrize("seed", [1, 2])
def test_random_interleavings_end_as_their_serial_order(tmp_path, seed):
    path, journal = tmp_path / "runs.json", tmp_path / "journal.jsonl"
    RunStore(path).insert(*({"id": f"r{i}", "tags": [], "notes": "", "count": 0, "state": "queued"} for i in range(4)))
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_interleaver, args=(str(path), str(journal), w, 30, seed * 100 + w)) for w in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len(entries) > 100 and {e[0] for e in entries} == set(OPERATIONS)
    stored = {r["id"]: {k: r[k] for k in ("tags", "notes", "count", "state")} for r in RunStore(path).all()}
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


# --- partitions --------------------------------------------------------------------------------------------------


def _run(run_id: str, state: str = "finished", **fields) -> dict:
    return {"id": run_id, "name": run_id, "state": state, "tags": [], "notes": "",
            "best": {"test/e_recall@1": {"value": 0.5, "epoch": 3}}, "run_dir": f"/nonexistent/{run_id}", **fields}


def _files(path: Path) -> dict[str, tuple[int, int]]:
    """Every store file's (inode, mtime): a file that was rewritten has a new inode (atomic replace)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in [path, *partitions_dir(path).glob("*.json")]}


def test_live_runs_sit_in_the_live_file_and_ended_ones_in_their_months_partition(tmp_path):
    path = tmp_path / "runs.json"
    store = RunStore(path)
    store.insert(_run("20261101-090000-aaaa", "running"), _run("20261102-090000-bbbb"), _run("20261203-090000-cccc", "crashed"),
                 _run("imported-run", "stopped"), _run("20261104-090000-dddd", "queued"))
    live = json.loads(path.read_text())
    assert [d["id"] for d in live["runs"].values()] == ["20261101-090000-aaaa", "20261104-090000-dddd"]
    assert sorted(p.name for p in partitions_dir(path).iterdir()) == ["ended-202611.json", "ended-202612.json",
                                                                      "ended-other.json"]
    assert "_rev" not in str(store.all()) and len(store.all()) == 5
    assert store.get("imported-run")["state"] == "stopped"

    before = _files(path)
    store.modify("20261101-090000-aaaa", lambda r: r.update(epoch=4))  # a live run's update: the live file alone
    after = _files(path)
    assert after["runs.json"] != before["runs.json"]
    assert {k: v for k, v in after.items() if k != "runs.json"} == {k: v for k, v in before.items() if k != "runs.json"}

    store.modify("20261101-090000-aaaa", lambda r: r.update(state="finished"))  # it ended: it moves
    assert [d["id"] for d in json.loads(path.read_text())["runs"].values()] == ["20261104-090000-dddd"]
    november = json.loads((partitions_dir(path) / "ended-202611.json").read_text())["runs"]
    assert sorted(d["id"] for d in november.values()) == ["20261101-090000-aaaa", "20261102-090000-bbbb"]
    assert _files(path)["ended-202612.json"] == before["ended-202612.json"]

    store.modify("20261102-090000-bbbb", lambda r: r.update(state="queued"))  # resumed: back to the live file
    assert store.get("20261102-090000-bbbb")["state"] == "queued"
    assert "20261102-090000-bbbb" in json.loads(path.read_text())["runs"].__str__()
    assert sorted(r["id"] for r in store.all()) == sorted(["20261101-090000-aaaa", "20261102-090000-bbbb",
                                                          "20261203-090000-cccc", "imported-run", "20261104-090000-dddd"])
    assert store.remove("20261203-090000-cccc") and store.get("20261203-090000-cccc") is None


def test_a_crash_between_the_two_writes_of_a_move_leaves_two_copies_and_the_newer_wins(tmp_path, monkeypatch):
    from dmltui import store as store_module

    path = tmp_path / "runs.json"
    store = RunStore(path)
    store.insert(_run("20261101-090000-aaaa", "running", epoch=1))

    def crash(self):  # the process dies after the destination was written, before the source was
        raise SystemExit("killed")

    monkeypatch.setattr(store_module.Partition, "write_moves", crash)
    with pytest.raises(SystemExit):
        store.modify("20261101-090000-aaaa", lambda r: r.update(state="finished", epoch=2))
    monkeypatch.undo()
    live = json.loads(path.read_text())["runs"]
    ended = json.loads((partitions_dir(path) / "ended-202611.json").read_text())["runs"]
    assert [d["epoch"] for d in live.values()] == [1] and [d["epoch"] for d in ended.values()] == [2]  # in both, never in neither

    from dmltui.monitor import RunsMonitor

    monitor = RunsMonitor(store=store)
    monitor.poll()
    assert [(r["state"], r["epoch"]) for r in monitor.records.values()] == [("finished", 2)]
    assert [(r["state"], r["epoch"]) for r in store.all()] == [("finished", 2)]  # and that read dropped the stale copy
    assert json.loads(path.read_text())["runs"] == {}


def _schema_2_file(path: Path, count: int, run_dirs: Path) -> list[dict]:
    """A store as dmltui wrote it before schema 3: every run in runs.json, configs as differences from a base."""
    documents, expected = {}, []
    for i in range(count):
        run_id = f"2026{10 + i % 3:02d}01-000000-{i:04x}"
        run_dir = run_dirs / run_id
        config = _config(i % 5)
        if i % 100 != 7:  # a few run dirs are gone: their configs stay in the store
            run_dir.mkdir(parents=True)
            (run_dir / "config.toml").write_text("[run]\nseed = 0\n")
        state = "running" if i % 50 == 0 else "finished"
        record = {**_run(run_id, state), "run_dir": str(run_dir), "seed": i % 5}
        documents[str(i + 1)] = {**record, "config_diff": {"set": [[["run", "seed"], i % 5], [["optim", "lr"], 3e-5],
                                                                   [["loss", "name"], "triplet"]]}}
        expected.append({**record, **({"config": config} if i % 100 == 7 else {})})
    path.write_text(json.dumps({"meta": {"1": {"schema_version": 2, "config_base": DEFAULTS}}, "runs": documents}))
    return expected


def test_a_schema_2_store_of_10000_runs_is_migrated_without_losing_anything(tmp_path):
    path = tmp_path / "runs.json"
    expected = _schema_2_file(path, 10_000, tmp_path / "runs")
    size_before = path.stat().st_size
    store = RunStore(path)
    assert _exact(sorted(store.all(), key=lambda r: r["id"])) == _exact(sorted(expected, key=lambda r: r["id"]))
    data = json.loads(path.read_text())
    assert data["meta"]["1"] == {"schema_version": SCHEMA_VERSION}
    assert len(data["runs"]) == 200 and all(d["state"] == "running" for d in data["runs"].values())
    assert path.stat().st_size < size_before / 20  # the live file is kilobytes
    assert sorted(p.name for p in partitions_dir(path).iterdir()) == ["ended-202610.json", "ended-202611.json",
                                                                      "ended-202612.json"]
    kept = [r for r in store.all() if "config" in r]
    assert len(kept) == 100 and all(r["config"] == _config(r["seed"]) for r in kept)


def test_version_1_files_are_migrated(tmp_path):
    path = tmp_path / "runs.json"
    runs = [_run("20261101-000000-0001", config=_config(1)), _run("20261101-000000-0002", "queued", config=_config(2))]
    path.write_text(json.dumps({"meta": {"1": {"schema_version": 1}}, "runs": {"1": runs[0], "2": runs[1]}}))
    assert _exact(sorted(RunStore(path).all(), key=lambda r: r["id"])) == _exact(runs)  # run dirs gone: configs kept
    assert json.loads(path.read_text())["meta"]["1"]["schema_version"] == SCHEMA_VERSION


def test_packed_configs_without_a_base_are_an_error(tmp_path):
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"meta": {"1": {"schema_version": 2}}, "runs": {"1": {"id": "a", "config_diff": {"set": []}}}}))
    before = path.read_text()
    with pytest.raises(StoreError, match="no config_base"):
        RunStore(path).all()
    assert path.read_text() == before and not partitions_dir(path).exists()


def _exact(records: list[dict]) -> str:
    """Records as text with key order and value types: equal only if they are identical."""
    return json.dumps(records)


def test_print_json_is_compact_when_piped_and_indented_on_a_terminal(monkeypatch, capsys):
    from dmltui.cli.common import print_json

    data = {"b": [1, {"x": None}], "a": Path("p")}
    print_json(data)
    assert capsys.readouterr().out == '{"a":"p","b":[1,{"x":null}]}\n'
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    print_json(data)
    assert capsys.readouterr().out == json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"

