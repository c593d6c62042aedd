"""Faults a long-lived tool meets: a kill -9 mid-checkpoint, a full disk, a run directory deleted under the TUI,
a store from a newer dmltui, garbage in metrics.jsonl. Each ends in a clear message and nothing torn or lost."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, dmltui

from dmltui.store import SCHEMA_VERSION
from dmltui.testing import fake_run
from engine.rundir import RunDir

TINY_ARGS = ["--preset", "quickstart", "--preset", "digits", "--set", "data.image_size=8", "--set", "sampler.batch_size=64",
             "--set", "eval.metrics=['e_recall@1']", "--set", "eval.at_start=false", "--set", "eval.raw_pixel_baseline=false"]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.05)


# --------------------------------------------------------------------------- kill -9 during a checkpoint write

STALLING_ENGINE = """
import io, sys, time
from pathlib import Path

import torch

from engine import trainer

marker, real_save, real_torch_save = Path(sys.argv[1]), trainer.atomic_torch_save, torch.save

def half_then_stall(obj, handle):  # half of the checkpoint is on disk when the kill comes
    buffer = io.BytesIO()
    real_torch_save(obj, buffer)
    handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    handle.flush()
    marker.write_text("writing")
    time.sleep(600)

def save(path, state):
    if path.name == "last.pt" and path.exists():  # the second epoch's checkpoint
        torch.save = half_then_stall
    real_save(path, state)

trainer.atomic_torch_save = save
from engine.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one_and_resume_finishes(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "writing"
    engine = subprocess.Popen([sys.executable, "-c", STALLING_ENGINE, str(marker), *TINY_ARGS, "--set", "optim.epochs=2",
                               "--run-dir", str(run_dir)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(marker.exists, 180, "the second checkpoint write")
        checkpoints = run_dir / "checkpoints"
        [partial] = list(checkpoints.glob(".tmp-last.pt-*"))
        assert partial.stat().st_size > 0  # killed mid-write, not before it
        os.kill(engine.pid, signal.SIGKILL)
        engine.wait(30)
    finally:
        engine.kill()
    last = torch.load(checkpoints / "last.pt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1 and "stall" not in last  # the previous checkpoint, whole

    resumed = subprocess.run([sys.executable, "-m", "engine", "--run-dir", str(run_dir), "--resume"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rd = RunDir(run_dir)
    assert rd.read_status()["state"] == "finished" and rd.read_status()["epoch"] == 2
    assert [r["epoch"] for r in rd.read_metrics() if r["kind"] == "train"] == [1, 2]
    assert not list(checkpoints.glob(".tmp-*"))  # the resume cleared what the kill left


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A real file system that fills up: a 1 MiB tmpfs (needs root, as in this project's CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Use up what is left of *disk*; returns the filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_under_the_store_is_one_line_and_changes_nothing(small_disk, monkeypatch):
    home = small_disk / "home"
    monkeypatch.setenv("DMLTUI_HOME", str(home))
    record = fake_run(home, name="r", tags=["a"], epochs=2)
    partition = home / "runs.d" / f"ended-{record['id'][:6]}.json"  # a finished run is kept in its month's partition
    store, manager = home / "runs.json", Path(record["run_dir"]) / "manager.json"
    before = store.read_bytes(), partition.read_bytes(), manager.read_bytes()
    filler = fill(small_disk)
    result = dmltui("runs", "tag", record["id"], "b")
    assert result.returncode == 1
    assert result.stderr == f"error: run store {partition} could not be written (No space left on device); nothing was changed\n"
    assert (store.read_bytes(), partition.read_bytes(), manager.read_bytes()) == before
    assert not list(home.glob("**/.tmp-*"))
    listed = dmltui("runs", "list", "--json")  # still opens
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["tags"] == ["a"]
    filler.unlink()
    assert dmltui("runs", "tag", record["id"], "b").returncode == 0
    assert json.loads(manager.read_text())["tags"] == ["a", "b"]


def test_a_full_disk_at_the_checkpoint_fails_the_run_cleanly(small_disk):
    run_dir = small_disk / "run"  # 1 MiB: the config, logs and metrics fit, the first checkpoint does not
    result = subprocess.run([sys.executable, "-m", "engine", *TINY_ARGS, "--set", "optim.epochs=2",
                             "--set", "model.embed_dim=512", "--run-dir", str(run_dir)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [error_line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "No space left on device" in error_line and str(run_dir / "train.log") in error_line
    rd = RunDir(run_dir)
    status = rd.read_status()
    assert status["state"] == "failed" and "No space left on device" in status["error"] and "\n" not in status["error"]
    assert not list((run_dir / "checkpoints").glob("*"))  # no torn last.pt, no temp file
    assert [r["epoch"] for r in rd.read_metrics() if r["kind"] == "train"] == [1]
    assert all(json.loads(line) for line in rd.metrics.read_text().splitlines())


def test_a_full_disk_at_metrics_jsonl_fails_the_run_cleanly(tmp_path, monkeypatch):
    from engine import rundir, trainer
    from engine.config.presets import resolve

    real_append, calls = rundir.append_line, []

    def append_until_full(path, line):
        calls.append(line)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_append(path, line)

    monkeypatch.setattr(rundir, "append_line", append_until_full)
    config = resolve(["quickstart", "digits"], ["data.image_size=8", "optim.epochs=3", "eval.metrics=['e_recall@1']",
                                                "eval.raw_pixel_baseline=false"]).config
    outcome = trainer.run(config, tmp_path / "run", show_progress=False)
    status = RunDir(tmp_path / "run").read_status()
    assert outcome.state == status["state"] == "failed"
    assert status["error"] == f"OSError: [Errno 28] No space left on device: '{tmp_path / 'run' / 'metrics.jsonl'}'"
    assert len(RunDir(tmp_path / "run").read_metrics()) == 1  # what was written before stays readable


# --------------------------------------------------------------------------- the store and the run directories


def test_a_store_from_a_newer_dmltui_is_refused_and_left_alone(isolated_env):
    isolated_env.mkdir(parents=True)
    store = isolated_env / "runs.json"
    store.write_text(json.dumps({"meta": {"1": {"schema_version": SCHEMA_VERSION + 1}}, "runs": {"1": {"id": "x"}}}))
    before = store.read_bytes()
    for args in (["runs", "list"], ["runs", "tag", "x", "t"], ["runs", "show", "x"]):
        result = dmltui(*args)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr == (f"error: run store {store} has schema version {SCHEMA_VERSION + 1}; this dmltui reads up "
                                 f"to {SCHEMA_VERSION}: upgrade dmltui; nothing was changed\n")
    assert store.read_bytes() == before


def test_garbage_lines_in_metrics_jsonl_are_skipped_everywhere(isolated_env):
    record = fake_run(isolated_env, name="garbled", epochs=4)
    metrics = Path(record["run_dir"]) / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    middle = len(lines) // 2
    garbage = ["{not json", "\x00\x01binary", '{"kind": "eval", "epoch": 3, "metrics": {"e_recall@1": 0.9', "[]", ""]
    metrics.write_text("\n".join(lines[:middle] + garbage + lines[middle:]) + "\n")
    shown = dmltui("runs", "show", record["id"], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["best"] == record["best"]  # what the valid lines say
    tail = dmltui("runs", "tail", record["id"], "--json")
    assert tail.returncode == 0, tail.stderr
    assert [json.loads(line) for line in tail.stdout.splitlines()] == [json.loads(line) for line in lines]
    compared = dmltui("compare", record["id"], "--json")
    assert compared.returncode == 0, compared.stderr


def test_a_run_directory_deleted_under_the_live_tui(isolated_env):
    from dmltui.tui.app import DmlTuiApp

    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        fake_run(isolated_env, name="bystander", index=0)
        record = fake_run(isolated_env, name="doomed", state="running", epoch=1, epochs=5, pid=process.pid, index=1)

        async def scenario():
            app = DmlTuiApp(poll_seconds=0.1)
            async with app.run_test(size=(100, 30)) as pilot:
                await pilot.pause(0.5)
                await pilot.press("enter")  # the newest run's screen: the doomed one
                await pilot.pause(0.5)
                shutil.rmtree(record["run_dir"])
                deadline = time.monotonic() + 15
                while app.monitor.records[record["id"]]["state"] != "crashed":
                    assert time.monotonic() < deadline, "the deleted run never showed as crashed"
                    await pilot.pause(0.1)
                header = str(app.screen.query_one("#run-header").render())
                assert "crashed" in header and "is gone" in header
                await pilot.press("escape")
                await pilot.pause(0.3)
                assert app.screen.__class__.__name__ == "RunsScreen" and app.is_running

        asyncio.run(scenario())
        stored = json.loads(dmltui("runs", "show", record["id"], "--json").stdout)
        assert stored["state"] == "crashed" and stored["error"] == f"run directory {record['run_dir']} is gone"
    finally:
        process.kill()
