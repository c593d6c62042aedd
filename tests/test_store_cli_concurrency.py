"""Concurrent commands on one run through the real entry point: nothing is lost, the run dir agrees with the store,
and a command that cannot get the store's lock exits 4 having changed nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, dmltui
from filelock import FileLock

from dmltui.testing import fake_run

INITIAL_TAGS = ["p1", "p2", "p3", "p4", "keep"]


def _start(*args: str) -> subprocess.Popen:
    script = Path(sys.executable).with_name("dmltui")
    return subprocess.Popen([str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=os.environ.copy())


def _stored(run_id: str) -> dict:
    result = dmltui("runs", "show", run_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_sixteen_concurrent_commands_lose_nothing(isolated_env):
    record = fake_run(isolated_env, name="shared", tags=INITIAL_TAGS)
    run_id = record["id"]
    commands = (
        [("add", f"t{n}", ["runs", "tag", run_id, f"t{n}"]) for n in range(1, 9)]
        + [("remove", f"p{n}", ["runs", "tag", run_id, f"p{n}", "--remove"]) for n in range(1, 5)]
        + [("note", f"note {n}", ["runs", "note", run_id, f"note {n}"]) for n in range(1, 3)]
        + [("list", None, ["runs", "list", "--json"]) for _ in range(2)]
    )
    assert len(commands) == 16
    processes = [(kind, value, _start(*args)) for kind, value, args in commands]  # all started before any is waited on
    outcomes = [(kind, value, process.wait(timeout=240), process) for kind, value, process in processes]

    done = []
    for kind, value, code, process in outcomes:
        stderr = process.stderr.read()
        assert code in (0, 4), f"{kind} {value}: exit {code}: {stderr}"
        assert "Traceback" not in stderr
        if code == 4:
            assert stderr.startswith("error: run store ") and stderr.count("\n") == 1
        elif kind == "list":
            assert run_id in {r["id"] for r in json.loads(process.stdout.read())}
        else:
            done.append((kind, value))

    stored = _stored(run_id)
    added = [value for kind, value in done if kind == "add"]
    removed = [value for kind, value in done if kind == "remove"]
    # Any serial order of the successful commands gives these tags (the additions in some order) and one of their notes.
    assert [t for t in stored["tags"] if not t.startswith("t")] == [t for t in INITIAL_TAGS if t not in removed]
    assert sorted(t for t in stored["tags"] if t.startswith("t")) == sorted(added)
    notes = [value for kind, value in done if kind == "note"]
    assert stored["notes"] in notes if notes else stored["notes"] == ""
    assert len(done) >= 12  # a busy store is allowed, but on this machine most commands get through

    manager = json.loads((Path(record["run_dir"]) / "manager.json").read_text())
    assert (manager["tags"], manager["notes"]) == (stored["tags"], stored["notes"])  # the run dir agrees, in order too


def test_a_busy_store_exits_4_and_changes_nothing(isolated_env):
    record = fake_run(isolated_env, name="held", tags=["a"])
    store_file = isolated_env / "runs.json"
    manager_file = Path(record["run_dir"]) / "manager.json"
    before = store_file.read_bytes(), manager_file.read_bytes()
    with FileLock(str(store_file) + ".lock"):  # another process is in the middle of a long transaction
        for args in (["runs", "tag", record["id"], "b"], ["runs", "note", record["id"], "x"], ["runs", "list"]):
            result = dmltui(*args, env={"DMLTUI_STORE_TIMEOUT": "0.5"})
            assert result.returncode == 4, result.stderr
            assert result.stderr == f"error: run store {store_file} is locked by another process (waited 0.5 s); nothing was changed\n"
            assert result.stdout == ""
    assert (store_file.read_bytes(), manager_file.read_bytes()) == before
    assert dmltui("runs", "tag", record["id"], "b").returncode == 0  # and once it is free, it works
    assert _stored(record["id"])["tags"] == ["a", "b"]


def test_a_bad_store_timeout_setting_is_one_line_and_exit_2(isolated_env):
    result = dmltui("runs", "list", env={"DMLTUI_STORE_TIMEOUT": "soon"})
    assert result.returncode == 2
    assert result.stderr == "error: DMLTUI_STORE_TIMEOUT='soon': expected seconds, e.g. 10\n"
