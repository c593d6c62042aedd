"""The soak test: local runs and a run on the real local SLURM together, under a CPU hog, with faults (SIGSTOP past
the heartbeat, kill -9), a stop and resume on SLURM and a deletion from the TUI, while the TUI polls every 0.3 s
and CLI processes tag and list in parallel. Once the system is quiet, `runs list --json`, the TUI and the run
directories agree with the journal of what really happened, no tag was lost and nothing is left behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import dmltui
from slurm_cluster import SLURM_TESTS

from engine.rundir import RunDir

SIGSTOP_SECONDS = 60.0


pytestmark = SLURM_TESTS


class Journal:
    """What the test did and saw, in order, shared by its threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.actions: list[tuple[float, str, str]] = []
        self.listed: dict[str, list[str]] = {}  # run id -> states seen by `runs list --json`, in order
        self.shown: dict[str, list[str]] = {}  # run id -> states seen in the TUI
        self.tags: dict[str, list[str]] = {}  # run id -> tags added by `runs tag`, that exited 0
        self.errors: list[str] = []

    def act(self, what: str, run_id: str = "") -> None:
        with self.lock:
            self.actions.append((time.monotonic(), what, run_id))

    def saw(self, where: dict[str, list[str]], run_id: str, state: str) -> None:
        with self.lock:
            seen = where.setdefault(run_id, [])
            if not seen or seen[-1] != state:
                seen.append(state)


def cli(*args: str) -> subprocess.CompletedProcess:
    return dmltui(*args, timeout=240)


def status(record: dict) -> dict:
    return RunDir(record["run_dir"]).read_status()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout} s")


def launch(*args: str) -> list[dict]:
    result = cli("run", "tiny", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.timeout(1500)
def test_soak_state_stays_true_under_load_faults_and_slurm(slurm_home, tmp_path):
    isolated_env = slurm_home
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    journal = Journal()
    runs: dict[str, dict] = {}
    stop = threading.Event()
    try:
        [runs["stalled"]] = launch("--gpus", "cpu", "--name", "stalled", "--set", "optim.epochs=120")
        [runs["killed"]] = launch("--gpus", "cpu", "--name", "killed", "--set", "optim.epochs=2000")
        [runs["plain"]] = launch("--gpus", "cpu", "--name", "plain", "--set", "optim.epochs=10")
        [runs["deleted"]] = launch("--gpus", "cpu", "--name", "deleted", "--set", "optim.epochs=3")
        [runs["slurm"]] = launch("--on", "slurm", "--name", "slurm", "--set", "optim.epochs=60")
        ids = {record["id"]: name for name, record in runs.items()}
        journal.act("launched five runs")

        def lister() -> None:
            while not stop.is_set():
                listed = cli("runs", "list", "--json")
                if listed.returncode != 0:
                    journal.errors.append(f"runs list: {listed.stderr.strip()}")
                    continue
                for record in json.loads(listed.stdout):
                    journal.saw(journal.listed, record["id"], record["state"])

        def tagger() -> None:
            number = 0
            while not stop.is_set():
                for name in ("stalled", "killed", "plain", "slurm"):
                    tag = f"soak-{number}"
                    number += 1
                    tagged = cli("runs", "tag", runs[name]["id"], tag)
                    if tagged.returncode == 0:
                        with journal.lock:
                            journal.tags.setdefault(runs[name]["id"], []).append(tag)
                    else:
                        journal.errors.append(f"runs tag: {tagged.stderr.strip()}")

        def faults() -> None:
            try:
                stalled, killed, on_slurm = runs["stalled"], runs["killed"], runs["slurm"]
                wait_for(lambda: status(stalled).get("epoch", 0) >= 2, 300, "the run to stop training")
                os.kill(status(stalled)["pid"], signal.SIGSTOP)
                journal.act("SIGSTOP", stalled["id"])
                stopped_at = time.monotonic()
                wait_for(lambda: status(killed).get("epoch", 0) >= 1, 300, "the run to kill training")
                os.kill(status(killed)["pid"], signal.SIGKILL)
                journal.act("kill -9", killed["id"])
                wait_for(lambda: status(on_slurm).get("epoch", 0) >= 1, 300, "the SLURM run training")
                stopped = cli("runs", "stop", on_slurm["id"], "--json")
                assert stopped.returncode == 0, stopped.stderr
                journal.act("runs stop", on_slurm["id"])
                resumed = cli("runs", "resume", on_slurm["id"], "--json")
                assert resumed.returncode == 0, resumed.stderr
                journal.act("runs resume", on_slurm["id"])
                time.sleep(max(0.0, SIGSTOP_SECONDS - (time.monotonic() - stopped_at)))
                os.kill(status(stalled)["pid"], signal.SIGCONT)
                journal.act("SIGCONT", stalled["id"])
            except BaseException as error:  # noqa: BLE001 - said by the test below
                journal.errors.append(f"faults: {type(error).__name__}: {error}")

        threads = [threading.Thread(target=target, daemon=True) for target in (lister, tagger, faults)]
        for thread in threads:
            thread.start()
        asyncio.run(_watch_in_the_tui(runs, journal, threads[2]))
        stop.set()
        for thread in threads[:2]:
            thread.join(240)
    finally:
        stop.set()
        hog.kill()
        hog.wait()
        for record in runs.values():
            job = status(record).get("slurm_job_id") if Path(record["run_dir"]).exists() else None
            if job:
                subprocess.run(["scancel", "--full", str(job)], capture_output=True)

    assert journal.errors == []
    truth = {"stalled": "finished", "killed": "crashed", "plain": "finished", "slurm": "finished"}
    listed = {r["id"]: r for r in json.loads(cli("runs", "list", "--json").stdout)}
    assert {ids[run_id]: record["state"] for run_id, record in listed.items()} == truth
    assert all(record["final"] for record in listed.values())
    # the run dirs say the same, through the one derivation
    from dmltui import runs as run_ops

    assert {name: run_ops.observe(runs[name]["run_dir"])[1].state for name in truth} == truth
    # what each run went through, as `runs list` and the TUI saw it
    for seen in (journal.listed, journal.shown):
        stalled = seen[runs["stalled"]["id"]]
        assert "stalled" in stalled and "crashed" not in stalled and stalled[-1] == "finished", stalled
        assert stalled[stalled.index("stalled") + 1:][0] == "running", stalled  # it beat again
        assert seen[runs["killed"]["id"]][-1] == "crashed" and "stalled" not in seen[runs["killed"]["id"]]
        slurm_seen = seen[runs["slurm"]["id"]]
        assert "stopped" in slurm_seen and slurm_seen[-1] == "finished" and "crashed" not in slurm_seen, slurm_seen
    # no tag was lost by the concurrent writers (the store and manager.json agree)
    for run_id, tags in journal.tags.items():
        assert set(tags) <= set(listed[run_id]["tags"]), run_id
        manager = json.loads((Path(listed[run_id]["run_dir"]) / run_ops.MANAGER_FILE).read_text())
        assert set(tags) <= set(manager["tags"])
    # nothing left behind: the deleted run's files, the trash, a staging folder, a process, a job
    runs_root = isolated_env / "runs"
    assert sorted(p.name for p in runs_root.iterdir() if p.name != run_ops.TRASH_DIR) == sorted(listed)
    assert not any((runs_root / run_ops.TRASH_DIR).iterdir()) if (runs_root / run_ops.TRASH_DIR).exists() else True
    # a run's final state is written just before its process exits (and its job leaves the queue): both go, and
    # stay gone, within a bounded wait
    pids = [status(r).get("pid") for name, r in runs.items() if name != "deleted"]
    wait_for(lambda: not any(run_ops.pid_alive(pid) for pid in pids), 60, "every run's process to exit")
    job = str(status(runs["slurm"])["slurm_job_id"]).split("_")[0]

    def job_gone() -> bool:
        queue = subprocess.run(["squeue", "--me", "--noheader", "--format=%i"], capture_output=True, text=True).stdout
        return all(entry.split("_")[0] != job for entry in queue.split())

    wait_for(job_gone, 60, "the SLURM job to leave the queue")


async def _watch_in_the_tui(runs: dict[str, dict], journal: Journal, faults: threading.Thread) -> None:
    """The TUI polls every 0.3 s throughout; it deletes one run once that run has finished; the screen is read until
    every run has ended and the TUI shows what `runs list` shows."""
    from dmltui.tui.app import DmlTuiApp

    app = DmlTuiApp(poll_seconds=0.3)
    names = {record["id"]: name for name, record in runs.items()}
    deleted = False
    async with app.run_test(size=(120, 30)) as pilot:
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline:
            await pilot.pause(0.3)
            for run_id, record in list(app.monitor.records.items()):
                journal.saw(journal.shown, run_id, record["state"])
                if names.get(run_id) == "deleted" and record["state"] == "finished" and not deleted:
                    app.run_operation("delete", record)
                    journal.act("TUI delete", run_id)
                    deleted = True
            shown = {run_id: record for run_id, record in app.monitor.records.items()}
            quiet = not faults.is_alive() and deleted and runs["deleted"]["id"] not in shown \
                and len(shown) == 4 and all(record.get("final") for record in shown.values())
            if quiet:
                table = app.screen.table
                cells = {run_id: str(table.get_cell(run_id, "state")) for run_id in shown}
                assert cells == {run_id: record["state"] for run_id, record in shown.items()}
                return
        raise AssertionError(f"the runs never went quiet: {[(names[i], r['state']) for i, r in app.monitor.records.items()]}")
