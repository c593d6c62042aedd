"""Runs on a real SLURM cluster (the one-node cluster `.ci/slurm-up` starts), through the real CLI. No mocks: sbatch,
squeue and scancel are SLURM's own, and there is no accounting database (no sacct), as on many clusters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import dmltui

from engine.rundir import RunDir


def _cluster_up() -> str | None:
    """None when a SLURM node accepts jobs; else why not."""
    if shutil.which("sinfo") is None:
        return "no SLURM here: run .ci/slurm-up (needs root and apt) to start a one-node cluster"
    result = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True)
    if result.returncode != 0 or not any(state.strip().rstrip("*") in ("idle", "mixed", "allocated")
                                         for state in result.stdout.split()):
        return f"the SLURM cluster does not answer ({(result.stderr or result.stdout).strip()[:120]}): run .ci/slurm-up"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_cluster_up() is not None, reason=_cluster_up() or "")]


def runs_json(*args: str) -> list[dict]:
    result = dmltui("runs", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def by_id(run_id: str) -> dict:
    return next(r for r in runs_json() if r["id"] == run_id)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s")


def submit(*args: str) -> list[dict]:
    result = dmltui("run", "tiny", "--on", "slurm", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "--me", "--array", "--noheader", "--format=%i"], capture_output=True, text=True).stdout
    return set(out.split())


@pytest.fixture
def slurm_home(tiny, isolated_env, tmp_path, monkeypatch):
    """A tiny preset, and a user config whose [slurm] table fits the one-node cluster (one CPU per run: two runs at
    once); the runs' and submitit's files are under the test's home (one node: its disk is 'shared')."""
    config = tmp_path / "config.toml"
    config.write_text("[slurm]\ncpus_per_task = 1\ntime = 30\n")
    monkeypatch.setenv("DMLTUI_CONFIG", str(config))
    yield isolated_env
    for run_dir in (isolated_env / "runs").glob("*"):  # no job of this test outlives it
        job = RunDir(run_dir).read_status().get("slurm_job_id")
        if job:
            subprocess.run(["scancel", "--full", str(job)], capture_output=True)


def test_runs_on_slurm_are_one_job_array_and_finish_with_their_output_in_the_run_dir(slurm_home):
    records = submit("--seeds", "0-1", "--set", "optim.epochs=1")
    statuses = [RunDir(r["run_dir"]).read_status() for r in records]
    jobs = [s["slurm_job_id"] for s in statuses]
    assert len({job.split("_")[0] for job in jobs}) == 1 and sorted(j.split("_")[1] for j in jobs) == ["0", "1"]  # one sbatch
    assert all(r["executor"] == "slurm" and r["state"] == "queued" for r in records)
    for record in records:
        wait_for(lambda r=record: by_id(r["id"])["state"] == "finished", 180, f"{record['name']} finished")
        run_dir = Path(record["run_dir"])
        assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "metrics.jsonl").stat().st_size > 0
        assert "epoch 1" in (run_dir / "train.log").read_text()
        assert by_id(record["id"])["best"]["test/e_recall@1"]["value"] > 0.5
        assert by_id(record["id"])["slurm_node"]


def test_a_pending_job_shows_its_reason_and_stop_cancels_it(slurm_home):
    [record] = submit("--slurm", 'sbatch=["--hold"]')  # held: PENDING until released
    listed = wait_for(lambda: by_id(record["id"]).get("slurm_reason") and by_id(record["id"]), 30, "the pending reason")
    assert listed["state"] == "queued" and listed["slurm_state"] == "PENDING" and listed["slurm_reason"] == "JobHeldUser"
    job = RunDir(record["run_dir"]).read_status()["slurm_job_id"]
    stopped = dmltui("runs", "stop", record["id"], "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert by_id(record["id"])["state"] == "stopped" and job not in squeue_ids()


def test_stop_of_a_running_job_checkpoints_and_a_killed_job_is_crashed(slurm_home):
    first, second = submit("--seeds", "0-1", "--set", "optim.epochs=100000")
    for record in (first, second):
        wait_for(lambda r=record: RunDir(r["run_dir"]).read_status().get("epoch", 0) >= 1, 180, "training under way")
    stopped = dmltui("runs", "stop", first["id"], "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert by_id(first["id"])["state"] == "stopped"
    assert (Path(first["run_dir"]) / "checkpoints" / "last.pt").is_file()  # the engine checkpointed on SLURM's SIGTERM
    stopped_at = RunDir(first["run_dir"]).read_status()["epoch"]
    resumed = dmltui("runs", "resume", first["id"], "--json")  # a new job, from the checkpoint
    assert resumed.returncode == 0, resumed.stderr
    wait_for(lambda: RunDir(first["run_dir"]).read_status().get("epoch", 0) > stopped_at, 120, "the resumed run training")
    assert "resumed after epoch" in (Path(first["run_dir"]) / "train.log").read_text()
    assert dmltui("runs", "stop", first["id"]).returncode == 0
    job = RunDir(second["run_dir"]).read_status()["slurm_job_id"]
    subprocess.run(["scancel", "--signal=KILL", f"{job}.0"], check=True)  # SIGKILL to the run's processes (OOM, a dead node)
    crashed = wait_for(lambda: by_id(second["id"])["state"] == "crashed", 60, "the killed job shown crashed")
    assert crashed


def test_bad_settings_and_refused_submissions_leave_nothing_behind(slurm_home):
    def refused(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        result = dmltui("run", "tiny", "--on", "slurm", *args, env=env)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not list((slurm_home / "runs").glob("*")) if (slurm_home / "runs").exists() else True
        assert runs_json() == []
        return result

    unknown = refused("--slurm", "partion=debug")
    assert unknown.returncode == 2 and "slurm setting 'partion' is unknown; settings: partition, account" in unknown.stderr
    wrong = refused("--slurm", "time=-5")
    assert wrong.returncode == 2 and "slurm setting time = -5: expected a whole number >= 0" in wrong.stderr
    no_partition = refused("--slurm", "partition=nope")
    assert no_partition.returncode == 1 and no_partition.stderr.startswith("error: SLURM refused the runs: ")
    assert "invalid partition" in no_partition.stderr.lower()
    without = refused(env={"PATH": str(Path(sys.executable).parent)})  # a machine without SLURM's commands
    assert without.returncode == 2 and "'sbatch' is not on the PATH" in without.stderr
    local = dmltui("run", "tiny", "--slurm", "time=5")
    assert local.returncode == 2 and "--slurm settings need --on slurm" in local.stderr


def test_slurms_warning_signal_checkpoints_requeues_and_resumes_to_the_uninterrupted_result(slurm_home):
    """The signal SLURM sends before a time limit or a preemption (SIGUSR2, here sent by hand at a known moment rather
    than by a 2-minute limit): the engine checkpoints, the run shows requeued, submitit requeues the job, and the
    resumed run ends equal, metric for metric, to the same run trained without a break."""
    settings = ["--set", "optim.epochs=12", "--set", "eval.every=3"]
    [record] = submit(*settings)
    plain = dmltui("run", "tiny", "--gpus", "cpu", "--json", *settings)  # the same run, on this machine, unbroken
    assert plain.returncode == 0, plain.stderr
    [reference] = json.loads(plain.stdout)
    wait_for(lambda: RunDir(record["run_dir"]).read_status().get("epoch", 0) >= 2, 180, "training under way")
    job = RunDir(record["run_dir"]).read_status()["slurm_job_id"]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_for(lambda: RunDir(record["run_dir"]).read_status().get("requeued_at"), 60, "the checkpoint before the requeue")
    assert by_id(record["id"])["state"] == "requeued"
    wait_for(lambda: by_id(record["id"])["state"] in ("finished", "failed", "crashed"), 400, "the requeued run ending")
    wait_for(lambda: by_id(reference["id"])["state"] in ("finished", "failed", "crashed"), 300, "the reference run")
    assert by_id(record["id"])["state"] == by_id(reference["id"])["state"] == "finished"
    log = (Path(record["run_dir"]) / "train.log").read_text()
    assert "received SIGUSR2" in log and "resumed after epoch" in log

    def evaluations(run_dir: str) -> list[tuple]:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        return [(r["epoch"], r["split"], r["metrics"]) for r in map(json.loads, lines) if r.get("kind") == "eval"]

    assert evaluations(record["run_dir"]) == evaluations(reference["run_dir"])
