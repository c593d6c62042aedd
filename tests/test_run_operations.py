"""Run operations against faults: nothing slow under the store's lock, rollback on any failure, deletions that are
all or nothing, and launches that never leave runs queued without a process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from dmltui import runs as run_ops
from dmltui.executors import slurm
from dmltui.store import REVISION_KEY, RunStore
from dmltui.testing import fake_run
from engine.rundir import RunDir


def lock_held(store: RunStore) -> bool:
    """Whether the store's file lock is held right now (by anyone: a new descriptor conflicts even in this process)."""
    probe = FileLock(str(store.lock.lock_file))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    probe.release()
    return False


def with_checkpoint(record: dict) -> dict:
    (Path(record["run_dir"]) / "checkpoints" / "last.pt").write_bytes(b"checkpoint")
    return record


def test_a_deleted_runs_directory_goes_through_the_trash_and_a_failed_deletion_says_where_it_is(isolated_env, monkeypatch):
    record = fake_run(isolated_env, name="old")
    run_dir = Path(record["run_dir"])
    seen_locked = []
    real_rmtree = shutil.rmtree

    def failing_rmtree(path, *args, onerror=None, **kwargs):
        seen_locked.append(lock_held(run_ops.open_store()))
        onerror(os.unlink, str(Path(path) / "checkpoints"), (OSError, OSError(5, "Input/output error"), None))

    monkeypatch.setattr(shutil, "rmtree", failing_rmtree)
    with pytest.raises(run_ops.RunError, match=r"forgotten, but its files could not all be deleted .*Input/output error.*"
                                               r"what is left is in .*\.trash"):
        run_ops.remove(record)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert seen_locked == [False]  # the files are deleted after the lock is released
    assert not run_dir.exists() and run_ops.open_store().get(record["id"]) is None
    [left] = (run_dir.parent / run_ops.TRASH_DIR).iterdir()
    assert left.name.startswith(run_dir.name)
    from dmltui.cli.db import run_dirs_under

    assert run_dirs_under(isolated_env / "runs") == []  # db rebuild never brings a deleted run back


def test_a_deletion_whose_store_write_fails_puts_the_directory_back(isolated_env, monkeypatch):
    from dmltui.store import StoreError, Transaction

    record = fake_run(isolated_env, name="kept")

    def refuse(self):
        raise StoreError("disk full")

    with monkeypatch.context() as patched, pytest.raises(StoreError):
        patched.setattr(Transaction, "_commit", refuse)
        run_ops.remove(record)
    assert Path(record["run_dir"]).is_dir() and run_ops.open_store().get(record["id"])["name"] == "kept"


@pytest.mark.parametrize("failure", [OSError(24, "Too many open files"), RuntimeError("unexpected")])
def test_a_resume_whose_launch_fails_puts_the_run_back_as_it_was(isolated_env, monkeypatch, failure):
    record = with_checkpoint(fake_run(isolated_env, name="halted", state="stopped", epoch=3))
    before = RunDir(record["run_dir"]).read_status()

    def no_launch(*args, **kwargs):
        raise failure

    monkeypatch.setattr(subprocess, "Popen", no_launch)
    with pytest.raises(run_ops.RunError if isinstance(failure, OSError) else RuntimeError, match=str(failure.args[-1])):
        run_ops.resume(record, gpus="cpu")
    after = RunDir(record["run_dir"]).read_status()
    assert {k: after.get(k) for k in run_ops._MARK_KEYS} == {k: before.get(k) for k in run_ops._MARK_KEYS}
    assert run_ops.open_store().get(record["id"])["state"] == "stopped"


def test_a_slurm_resume_submits_outside_the_lock_and_rolls_back_when_sbatch_refuses(isolated_env, monkeypatch):
    record = with_checkpoint(fake_run(isolated_env, name="on-cluster", state="stopped", epoch=3))
    rd = RunDir(record["run_dir"])
    rd.update_status(executor="slurm", slurm_job_id="11_0", slurm_settings={"time": 30})
    run_ops.reconcile(record["id"])
    store = run_ops.open_store()
    calls = []

    def watched_queue():
        calls.append(("squeue", lock_held(store)))
        return {}

    def refused(run_dirs, settings, **kwargs):
        calls.append(("sbatch", lock_held(store), RunDir(run_dirs[0]).read_status()["state"]))
        raise slurm.SlurmError("sbatch: error: invalid partition")

    monkeypatch.setattr(slurm, "queue", watched_queue)
    monkeypatch.setattr(slurm, "submit", refused)
    with pytest.raises(run_ops.RunError, match="was not resubmitted: sbatch: error: invalid partition"):
        run_ops.resume(record)
    assert ("sbatch", False, "queued") in calls  # marked queued under the lock, submitted after it
    assert all(not held for _, held, *_ in calls)
    status = rd.read_status()
    assert status["state"] == "stopped" and status["slurm_job_id"] == "11_0"
    assert run_ops.open_store().get(record["id"])["state"] == "stopped"


def test_two_resumes_of_one_run_at_once_start_it_once(isolated_env, monkeypatch):
    record = with_checkpoint(fake_run(isolated_env, name="twice", state="crashed", epoch=2))
    started = []
    barrier = threading.Barrier(2)

    def launched(current, **kwargs):
        started.append(current["id"])
        RunDir(current["run_dir"]).update_status(pid=os.getpid())
        return current

    monkeypatch.setattr(run_ops, "launch_detached", launched)
    outcomes = []

    def attempt():
        barrier.wait()
        try:
            outcomes.append(run_ops.resume(record, gpus="cpu")["state"])
        except run_ops.RunError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert started == [record["id"]]
    assert sorted(outcomes)[0] == "queued" and "resumable states" in sorted(outcomes)[1]


def test_a_launch_that_fails_midway_reports_the_started_runs_and_removes_the_rest(isolated_env, tiny, monkeypatch):
    from dmltui import launching

    planned, _ = launching.plan_runs([tiny], [], seeds="0-3")
    real = run_ops.launch_detached
    count = []

    def third_fails(record, **kwargs):
        count.append(record["id"])
        if len(count) == 3:
            raise OSError(12, "Cannot allocate memory")
        return real(record, **kwargs)

    monkeypatch.setattr(run_ops, "launch_detached", third_fails)
    with pytest.raises(launching.LaunchIncomplete, match=r"started 2 of 4 runs; tiny-s2 could not be started "
                                                         r"\(OSError: .*Cannot allocate memory\), so it and the 1 after"):
        launching.start_runs(planned, gpus="cpu")
    stored = run_ops.open_store().all()
    assert sorted(r["name"] for r in stored) == ["tiny-s0", "tiny-s1"]
    assert sorted(p.name for p in (isolated_env / "runs").iterdir() if not p.name.startswith(".")) == sorted(r["id"] for r in stored)
    for record in stored:
        status = RunDir(record["run_dir"]).read_status()
        if status.get("pid"):
            try:
                os.killpg(status["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_prepared_run_whose_launcher_died_is_crashed_not_queued_forever(isolated_env):
    """`dmltui run` prepares the runs, then launches them: a CLI killed in between leaves runs no process will
    ever start. Their launcher's pid says so."""
    record = fake_run(isolated_env, name="orphan", state="queued")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    RunDir(record["run_dir"]).update_status(launcher_pid=dead.pid, launcher_host=os.uname().nodename)
    reconciled = run_ops.reconcile(record["id"])
    assert reconciled["state"] == "crashed" and reconciled["final"]
    assert f"pid {dead.pid}" in reconciled["error"]
    assert [r["state"] for r in run_ops.open_store().all()] == ["crashed"]


# --------------------------------------------------------------------------- the store


def test_where_a_crash_left_a_run_in_two_files_the_higher_revision_wins_everywhere(isolated_env):
    record = fake_run(isolated_env, name="moved", state="finished")
    store = run_ops.open_store()
    with store.transaction() as tx:
        tx.modify(record["id"], lambda r: r.update(notes="newer"))
    # the live file still holds an older copy (a crash between a move's two writes)
    from tinydb import TinyDB

    from dmltui.store import AtomicJSONStorage

    db = TinyDB(str(store.path), storage=AtomicJSONStorage)
    db.table("runs", cache_size=0).insert({**record, "state": "running", "notes": "older", REVISION_KEY: 0})
    db.storage.flush()
    assert store.get(record["id"])["notes"] == "newer"
    assert [r["notes"] for r in store.all()] == ["newer"]
    assert run_ops.open_store().peek_live() == []  # the transaction above dropped the stale copy


def test_db_rebuild_that_fails_moving_the_partitions_aside_leaves_every_original_in_place(isolated_env, monkeypatch):
    fake_run(isolated_env, name="a", state="finished")
    fake_run(isolated_env, name="b", state="running", index=1, pid=os.getpid())
    store = run_ops.open_store()
    before = {p: p.read_bytes() for p in store.files()}
    assert len(before) == 2
    real_rename = Path.rename

    def second_rename_fails(self, target):
        if self == store.partitions_dir:
            raise OSError(18, "Invalid cross-device link")
        return real_rename(self, target)

    with monkeypatch.context() as patched, pytest.raises(OSError, match="cross-device"):
        patched.setattr(Path, "rename", second_rename_fails)
        store.rebuild(lambda: [], isolated_env / "runs.json.bak")
    assert {p: p.read_bytes() for p in store.files()} == before
    assert not (isolated_env / "runs.json.bak").exists()


def test_db_rebuild_twice_in_one_second_keeps_both_previous_stores(isolated_env):
    fake_run(isolated_env, name="a", state="finished")
    store = run_ops.open_store()
    aside = isolated_env / "runs.json.bak"
    first = store.rebuild(lambda: [], aside)
    fake_run(isolated_env, name="b", state="finished", index=1)
    second = store.rebuild(lambda: [], aside)
    assert first == aside and second == isolated_env / "runs.json.bak.1"

    def names(aside: Path) -> list[str]:  # the runs of the ended partitions moved aside with it
        return sorted(doc["name"] for file in Path(f"{aside}.d").glob("*.json")
                      for doc in json.loads(file.read_text())["runs"].values())

    assert names(first) == ["a"] and names(second) == ["b"]


def test_a_stop_that_ends_after_a_resume_took_the_run_over_leaves_the_resumed_run_alone(isolated_env):
    """The TUI's stop waits for its job to leave the queue, then marks a run that never recorded its stop as stopped;
    a resume that came meanwhile (a new job) must not be overwritten by that mark."""
    record = fake_run(isolated_env, name="raced", state="running", pid=os.getpid())
    rd = RunDir(record["run_dir"])
    rd.update_status(executor="slurm", slurm_job_id="21")
    rd.update_status(state="queued", slurm_job_id="22")  # the resume's new job
    run_ops._stopped_unless_final(rd, "stopped by the run manager (scancel) before it checkpointed", slurm_job_id="21")
    assert rd.read_status()["state"] == "queued"
    run_ops._stopped_unless_final(rd, "stopped by the run manager (scancel) before it checkpointed", slurm_job_id="22")
    assert rd.read_status()["state"] == "stopped"
