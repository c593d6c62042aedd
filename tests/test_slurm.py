"""Runs on a real SLURM cluster (the one-node cluster `.ci/slurm-up` starts), through the real CLI. No mocks: sbatch,
squeue and scancel are SLURM's own, and there is no accounting database (no sacct), as on many clusters."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, dmltui
from slurm_cluster import SLURM_TESTS, slurm_timings

from engine.rundir import RunDir

pytestmark = SLURM_TESTS


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
    table = dmltui("runs", "list", env={"COLUMNS": "200"})  # a "where" column, as squeue shows the job
    assert f"{job} PD (JobHeldUser)" in table.stdout, table.stdout
    stopped = dmltui("runs", "stop", record["id"], "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert by_id(record["id"])["state"] == "stopped" and job not in squeue_ids()


def test_a_rerun_asks_slurm_for_what_the_run_was_submitted_with(slurm_home):
    """--slurm overrides are kept in the run dir: a rerun (and a resume) asks for the same time limit and options,
    not the [slurm] table's defaults."""
    [record] = submit("--slurm", 'sbatch=["--hold"]', "--slurm", "time=7")
    assert dmltui("runs", "stop", record["id"]).returncode == 0
    again = dmltui("runs", "rerun", record["id"], "--json")
    assert again.returncode == 0, again.stderr
    new = json.loads(again.stdout)
    job = RunDir(new["run_dir"]).read_status()["slurm_job_id"]
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
    assert "TimeLimit=00:07:00" in shown and "JobState=PENDING" in shown and "Reason=JobHeldUser" in shown, shown


@pytest.mark.timeout(600)  # the killed job is crashed only after the SLURM silence rule's 120 s
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
    # a new job: SLURM starts it within seconds (the other CPU is free), then the engine starts and loads the checkpoint
    wait_for(lambda: RunDir(first["run_dir"]).read_status().get("epoch", 0) > stopped_at, 240, "the resumed run training")
    assert "resumed after epoch" in (Path(first["run_dir"]) / "train.log").read_text()
    assert dmltui("runs", "stop", first["id"]).returncode == 0
    job = RunDir(second["run_dir"]).read_status()["slurm_job_id"]
    subprocess.run(["scancel", "--signal=KILL", f"{job}.0"], check=True)  # SIGKILL to the run's processes (OOM, a dead node)
    from dmltui.states import SLURM_STALE_SECONDS

    # crashed once its job has left the queue and its run dir has been silent for the SLURM rule's 120 s (a job
    # missing from squeue while its run still writes is not a crash); until then it shows what its run dir says
    crashed = wait_for(lambda: by_id(second["id"])["state"] == "crashed", SLURM_STALE_SECONDS + 60,
                       "the killed job shown crashed")
    assert crashed and not by_id(second["id"])["final"]  # re-checked a while yet: squeue may have had a blip


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

    assert evaluations(record["run_dir"]) == evaluations(reference["run_dir"])


def evaluations(run_dir: str | Path) -> list[tuple]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [(r["epoch"], r["split"], r["metrics"]) for r in map(json.loads, lines) if r.get("kind") == "eval"]


def train_losses(run_dir: str | Path) -> list[tuple]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [(r["epoch"], r["metrics"]["loss"]) for r in map(json.loads, lines) if r.get("kind") == "train"]


def test_a_run_of_two_processes_is_ddp_under_torchrun_in_its_one_task(slurm_home, tmp_path):
    """--gpus-per-run 2 on SLURM: torchrun starts two ranks in the run's one task (gloo on this CPU-only node), which
    asks for twice the [slurm] table's per-process CPUs (and GPUs). SLURM's warning signal reaches both ranks and
    torchrun, which must not die of it before its ranks have checkpointed; the requeued job resumes both, and the
    run ends equal, metric for metric, to the same DDP run started on this machine with torchrun, unbroken."""
    # 16 epochs (about 1 s each here): 14 left to train after the signal's moment, and a local reference of its ~15 s
    # startup plus 16 epochs, not 40 (about 35 s rather than 60 unloaded, within its 300 s bound under load); it trains
    # after the SLURM run has ended, so the two never share the cores
    [record] = submit("--gpus-per-run", "2", "--set", "run.device='cpu'", "--set", "optim.epochs=16", "--set", "eval.every=4")
    wait_for(lambda: RunDir(record["run_dir"]).read_status().get("epoch", 0) >= 2, 240, "both ranks training")
    status = RunDir(record["run_dir"]).read_status()
    assert status["world_size"] == 2 and status["slurm_processes"] == 2
    subprocess.run(["scancel", "--signal=USR2", status["slurm_job_id"]], check=True)
    wait_for(lambda: RunDir(record["run_dir"]).read_status().get("requeued_at"), 60, "the checkpoint before the requeue")
    wait_for(lambda: by_id(record["id"])["state"] in ("finished", "failed", "crashed"), 240, "the requeued DDP run ending")
    assert by_id(record["id"])["state"] == "finished", (Path(record["run_dir"]) / "output.log").read_text()[-2000:]
    log = (Path(record["run_dir"]) / "train.log").read_text()
    assert "received SIGUSR2" in log and "resumed after epoch" in log
    job = status["slurm_job_id"].split("_")[0]
    [script] = Path(status["slurm_folder"]).glob(f"{job}*/*_submission.sh")
    assert "#SBATCH --cpus-per-task=2" in script.read_text() and "#SBATCH --ntasks-per-node=1" in script.read_text()
    local = tmp_path / "local-ddp"
    local.mkdir()
    shutil.copy(Path(record["run_dir"]) / "config.toml", local / "config.toml")
    reference = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "engine",
         "--run-dir", str(local)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert RunDir(local).read_status()["world_size"] == 2
    assert evaluations(record["run_dir"]) == evaluations(local)
    assert train_losses(record["run_dir"]) == train_losses(local)


@pytest.mark.timeout(2400)  # a ceiling for a crawling machine; it fails sooner, once the run stops making progress
def test_a_job_past_its_time_limit_is_signalled_checkpoints_requeues_and_ends_as_an_uninterrupted_run(slurm_home):
    """A real 1-minute time limit on about a minute of training (or more, on a loaded machine). SLURM checks limits
    every 30 s (slurmctld's PERIODIC_TIMEOUT, not configurable), so with signal_delay=5 its SIGUSR2 comes 25 to 55 s
    into each job; every requeued job waits cred_expire + 1 s before it starts again (.ci/slurm-up sets 10 s rather
    than 120) and has the same limit, so the run sees several requeues, more on a slow machine: how many is not the
    point, so max_requeues is ample, and the test fails when a few slots in a row bring no new epoch. The run must end
    equal, metric for metric, to the same run trained without a break. The waits are sized from the cluster's settings."""
    limit_s, requeues = 60, 40
    timings = slurm_timings()
    # each requeue waits cred_expire + 1 s, then until the scheduler looks
    per_requeue = timings["cred_expire"] + 1 + timings["scheduled"]
    if per_requeue > limit_s:
        pytest.skip(f"this cluster's cred_expire={timings['cred_expire']} s (AuthInfo), scheduler interval "
                    f"{timings['scheduled']} s: each requeue waits {per_requeue} s, longer than the 1-minute slots it "
                    f"separates; .ci/slurm-up sets cred_expire=10")
    # a job ends by its limit (+ KillWait had it ignored the signal), then waits to start again
    slot_s = limit_s + timings["kill_wait"] + per_requeue
    settings = ["--set", "optim.epochs=260", "--set", "eval.every=65"]
    [record] = submit("--slurm", "time=1", "--slurm", "signal_delay=5", "--slurm", "checkpoint_seconds=5",
                      "--slurm", f"max_requeues={requeues}", *settings)
    wait_for(lambda: RunDir(record["run_dir"]).read_status().get("requeued_at"), timings["scheduled"] + slot_s + 60,
             "SLURM's signal before the limit")
    seen = []

    def pending_again():  # after the checkpoint the job still runs (or leaves squeue a moment) until it is requeued
        listed = by_id(record["id"])
        seen.append((listed["state"], listed["slurm_state"]))
        return listed if listed["slurm_state"] == "PENDING" else None

    # the job ends by its limit + KillWait; its requeue then keeps it pending for cred_expire + 1 s at least
    listed = wait_for(pending_again, timings["kill_wait"] + 60, "the requeued job pending again")
    # from the checkpoint on, and back in the queue until its BeginTime (then until a CPU is free): requeued
    assert {state for state, _ in seen} == {"requeued"}, seen
    assert listed["slurm_reason"] in ("BeginTime", "Resources")
    slurm_progress = {"epoch": -1, "at": time.monotonic()}

    def slurm_run_ended() -> bool:  # three slots in a row without a new epoch: the requeues no longer move the run on
        status = RunDir(record["run_dir"]).read_status()
        if (status.get("epoch") or 0) != slurm_progress["epoch"]:
            slurm_progress.update(epoch=status.get("epoch") or 0, at=time.monotonic())
        assert time.monotonic() - slurm_progress["at"] < 3 * slot_s, \
            f"the SLURM run stuck at epoch {slurm_progress['epoch']} for three slots ({status.get('state')})"
        return status.get("state") in ("finished", "failed", "crashed", "stopped")

    wait_for(slurm_run_ended, 2400, "the requeued run ending")
    # the same run, on this machine, unbroken: started once the SLURM run has ended, as sharing the cores with it would
    # have each job train fewer epochs before its limit, and the run need more requeues
    plain = dmltui("run", "tiny", "--gpus", "cpu", "--json", *settings)
    assert plain.returncode == 0, plain.stderr
    [reference] = json.loads(plain.stdout)
    # about a minute alone, several under other tests' load: it fails when it stops making progress, not by the clock
    progress = {"epoch": -1, "at": time.monotonic()}

    def reference_ended() -> bool:
        epoch = RunDir(reference["run_dir"]).read_status().get("epoch") or 0
        if epoch != progress["epoch"]:
            progress.update(epoch=epoch, at=time.monotonic())
        assert time.monotonic() - progress["at"] < 120, f"the reference run stuck at epoch {epoch} for 120 s"
        return by_id(reference["id"])["state"] in ("finished", "failed", "crashed")

    try:
        wait_for(reference_ended, 900, "the reference run")
    finally:  # a failure leaves no local run training
        if by_id(reference["id"])["state"] in ("queued", "running"):
            dmltui("runs", "stop", reference["id"])
    assert by_id(record["id"])["state"] == by_id(reference["id"])["state"] == "finished"
    log = (Path(record["run_dir"]) / "train.log").read_text()
    assert "received SIGUSR2" in log and "resumed after epoch" in log
    status = RunDir(record["run_dir"]).read_status()
    job_log = "".join(p.read_text() for p in Path(status["slurm_folder"]).glob(f"{status['slurm_job_id']}/*_log.out"))
    assert "Job has timed out" in job_log  # submitit's word: the signal was the time limit's, not a preemption
    assert evaluations(record["run_dir"]) == evaluations(reference["run_dir"])


def test_runs_tail_follows_a_slurm_run_from_the_queue_until_it_ends(slurm_home):
    """`runs tail` on the login node reads the run's files as the job writes them, from before the job starts until
    SLURM has it end: every metric record once, then exit 0."""
    [record] = submit("--set", "optim.epochs=4")
    follow = subprocess.Popen([str(Path(sys.executable).with_name("dmltui")), "runs", "tail", record["id"], "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    table = dmltui("runs", "tail", record["id"])  # the live table, until the run ends
    out, err = follow.communicate(timeout=120)
    assert follow.returncode == 0 and table.returncode == 0, err + table.stderr
    assert RunDir(record["run_dir"]).read_status()["state"] == "finished"
    streamed = [json.loads(line) for line in out.splitlines()]
    assert streamed == RunDir(record["run_dir"]).read_metrics() and [r["epoch"] for r in streamed if r["kind"] == "train"] == [1, 2, 3, 4]
    assert "finished" in table.stdout


def test_the_tui_launches_on_slurm_shows_the_job_and_stops_resumes_and_reruns_it(slurm_home):
    """The new-run form with target SLURM: the run becomes a job (held here, so that it stays PENDING with a known
    reason), the runs table and the run screen show its id, state and reason, then its node once released; stop,
    resume and rerun from the TUI go through SLURM (scancel, a new job, a new run's job)."""
    import asyncio

    from textual.widgets import Select

    from dmltui.tui.app import DmlTuiApp
    from dmltui.tui.screens.new_run import NewRunScreen
    from dmltui.tui.screens.run import RunScreen
    from dmltui.tui.screens.runs import RunsScreen

    config = Path(os.environ["DMLTUI_CONFIG"])
    config.write_text(config.read_text() + 'sbatch = ["--hold"]\n')

    async def until(pilot, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            await pilot.pause(0.2)
        raise AssertionError(f"{what}: not within {timeout} s")

    def runs(app) -> list[dict]:
        return sorted(app.monitor.records.values(), key=lambda r: r["created_at"])

    def where(app, record) -> str:
        return str(app.screen.table.get_cell(record["id"], "where"))

    async def confirm(pilot, key: str):
        await pilot.press(key)
        await until(pilot, lambda: type(pilot.app.screen).__name__ == "ConfirmScreen", 10, f"{key} asks first")
        await pilot.press("y")

    async def scenario():
        app = DmlTuiApp(poll_seconds=0.2)
        async with app.run_test(size=(120, 40)) as pilot:
            app.push_screen(NewRunScreen("tiny"))
            screen = await until(pilot, lambda: isinstance(app.screen, NewRunScreen) and app.screen, 30, "the form")
            await until(pilot, lambda: screen.form is not None and screen.form.ready and screen.choices, 120, "the form")
            screen.form.set_value("optim.epochs", "100000")
            screen.query_one("#nr-on", Select).value = "slurm"
            await until(pilot, lambda: screen.outcome and screen.validated_generation == screen.generation
                        and screen.last_request.on == "slurm", 60, "validation")
            assert not screen.outcome.problems and not screen.local_errors
            await pilot.press("ctrl+s")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen), 60, "back on the runs screen")
            [record] = await until(pilot, lambda: runs(app), 10, "the run listed")
            job = RunDir(record["run_dir"]).read_status()["slurm_job_id"]
            assert job in squeue_ids()
            await until(pilot, lambda: where(app, record) == f"{job} PD (JobHeldUser)", 20, "the held job in the table")
            await pilot.press("enter")
            run_screen = await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen, 10, "the run screen")
            header = run_screen.query_one("#run-header")
            await until(pilot, lambda: f"slurm job {job}: PENDING (JobHeldUser)" in str(header.render()), 10, "its header")
            subprocess.run(["scontrol", "release", job], check=True)
            await until(pilot, lambda: f"slurm job {job}: RUNNING on " in str(header.render()), 60, "the job running")
            await until(pilot, lambda: (app.run_record(record["id"]) or {}).get("epoch", 0) >= 1, 120, "training")
            await confirm(pilot, "x")  # stop: scancel, the engine checkpoints
            await until(pilot, lambda: app.run_record(record["id"])["state"] == "stopped", 90, "stopped")
            assert (Path(record["run_dir"]) / "checkpoints" / "last.pt").is_file()
            await until(pilot, lambda: job not in squeue_ids(), 60, "the job out of the queue")
            await pilot.press("r")  # resume: a new job (held again by the [slurm] table)
            resumed = await until(pilot, lambda: RunDir(record["run_dir"]).read_status()["slurm_job_id"] not in (None, job),
                                  30, "resubmitted") and RunDir(record["run_dir"]).read_status()["slurm_job_id"]
            await until(pilot, lambda: f"slurm job {resumed}: PENDING (JobHeldUser)" in str(header.render()), 20, "the new job")
            await until(pilot, lambda: app.run_record(record["id"])["state"] == "queued", 20, "queued again")
            await confirm(pilot, "x")
            await until(pilot, lambda: app.run_record(record["id"])["state"] == "stopped", 60, "stopped again")
            await confirm(pilot, "R")  # rerun: a new run, on SLURM as this one was
            await until(pilot, lambda: len(runs(app)) == 2, 30, "the rerun listed")
            new = runs(app)[1]
            status = RunDir(new["run_dir"]).read_status()
            assert status["executor"] == "slurm" and status["slurm_job_id"] in squeue_ids()
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen), 10, "the runs screen")
            await until(pilot, lambda: where(app, new) == f"{status['slurm_job_id']} PD (JobHeldUser)", 20, "the rerun's job")

    asyncio.run(scenario())


@pytest.mark.timeout(900)
def test_a_run_out_of_requeues_ends_stopped_with_its_reason_and_no_listing_ever_sees_it_end_before(slurm_home):
    """max_requeues = 1 on a real 1-minute limit: the first limit requeues the run, the second finds it out of
    requeues. `runs list --json`, polled all along as a script waiting for its runs would, never shows a final state
    until that end; a requeued run has no ended_at; the end says why, and `runs resume` continues the run."""
    import threading

    [record] = submit("--slurm", "time=1", "--slurm", "signal_delay=5", "--slurm", "checkpoint_seconds=5",
                      "--slurm", "max_requeues=1", "--set", "optim.epochs=100000")
    seen: list[dict] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            listed = dmltui("runs", "list", "--json")
            if listed.returncode == 0:
                seen.extend(r for r in json.loads(listed.stdout) if r["id"] == record["id"])

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        # two slots of at most a minute, a requeue wait of cred_expire between them (10 s by .ci/slurm-up)
        wait_for(lambda: RunDir(record["run_dir"]).read_status().get("state") == "stopped", 400, "the run out of requeues")
        wait_for(lambda: seen and seen[-1]["state"] == "stopped", 60, "the listing's end")
    finally:
        done.set()
        poller.join(60)
    status = RunDir(record["run_dir"]).read_status()
    assert status["error"] == "not requeued: timed-out too many times; `dmltui runs resume` continues it"
    assert status["ended_at"] and status["requeued_at"]
    states_seen = [state for i, state in enumerate(r["state"] for r in seen) if i == 0 or seen[i - 1]["state"] != state]
    assert "requeued" in states_seen and states_seen[-1] == "stopped"
    assert all(state in ("queued", "running", "requeued") for state in states_seen[:-1]), states_seen
    assert all(r["ended_at"] is None for r in seen if r["state"] == "requeued")
    assert by_id(record["id"])["final"]
    stopped_at = status["epoch"]
    resumed = dmltui("runs", "resume", record["id"], "--json")  # a new job, with the settings it was submitted with
    assert resumed.returncode == 0, resumed.stderr
    wait_for(lambda: RunDir(record["run_dir"]).read_status().get("epoch", 0) > stopped_at, 240, "the resumed run training")
    assert dmltui("runs", "stop", record["id"]).returncode == 0
