"""The run state machine (dmltui.states): every written state against every kind of fact an executor supplies, and
the readers built on it (observe, the engine's final write, the squeue cache, the SLURM settings' checks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from dmltui import states
from dmltui.executors import slurm
from dmltui.states import LocalFacts, SlurmFacts, derive

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
FRESH = 5.0
LOCAL_STALE = states.LOCAL_STALE_SECONDS + 1
SLURM_STALE = states.SLURM_STALE_SECONDS + 1
SLURM_GONE_FOR_GOOD = states.SLURM_SETTLE_SECONDS + 1
OTHER_HOST_LOST = states.OTHER_HOST_LOST_SECONDS + 1
WRITTEN_FINAL = ("finished", "failed", "stopped", "diverged")


def status(state: str, *, beat: float | None = FRESH, pid: int | None = 4242, **extra) -> dict:
    fields = {"state": state, "pid": pid, "host": "here", **extra}
    if beat is not None:
        fields["heartbeat_at"] = (NOW - timedelta(seconds=beat)).isoformat()
    return fields


def slurm_status(state: str, *, beat: float | None = FRESH, job: str | None = "7_1", **extra) -> dict:
    return status(state, beat=beat, executor="slurm", slurm_job_id=job, **extra)


ALIVE, DEAD, UNKNOWN = LocalFacts(True), LocalFacts(False), LocalFacts(None)

# (written status, local facts) -> (shown state, final)
LOCAL_CASES = [
    *[(status(final, beat=beat), facts, final, True) for final in WRITTEN_FINAL for facts in (ALIVE, DEAD, UNKNOWN)
      for beat in (FRESH, LOCAL_STALE, None)],
    (status("running"), ALIVE, "running", False),
    (status("running", beat=LOCAL_STALE), ALIVE, "stalled", False),  # SIGSTOPped, or hung: alive but silent
    (status("running"), DEAD, "crashed", True),  # kill -9, OOM: gone for good on this host
    (status("running", beat=LOCAL_STALE), DEAD, "crashed", True),
    (status("running"), UNKNOWN, "running", False),  # another host: nothing to check but the heartbeat
    (status("running", beat=LOCAL_STALE), UNKNOWN, "stalled", False),
    (status("running", beat=OTHER_HOST_LOST), UNKNOWN, "crashed", False),  # taken for crashed, still re-checked
    (status("queued", beat=None), ALIVE, "queued", False),  # the launcher waits for GPU leases
    (status("queued", beat=None), DEAD, "crashed", True),  # ...and died waiting
    (status("queued", beat=None, pid=None), LocalFacts(None, None), "queued", False),  # prepared, nobody vouches
    (status("queued", beat=None, pid=None, launcher_pid=9), LocalFacts(None, True), "queued", False),
    (status("queued", beat=None, pid=None, launcher_pid=9), LocalFacts(None, False), "crashed", True),  # never started
    (status("requeued", beat=LOCAL_STALE), ALIVE, "requeued", False),
    (status("requeued", beat=LOCAL_STALE), DEAD, "crashed", True),
]


@pytest.mark.parametrize(("written", "facts", "shown", "final"), LOCAL_CASES)
def test_local_runs(written, facts, shown, final):
    derived = derive(written, facts, now=NOW)
    assert (derived.state, derived.final) == (shown, final)
    if shown in ("stalled", "crashed") and written["state"] not in WRITTEN_FINAL:
        assert derived.reason  # a derived state always says why


def job(state: str | None) -> SlurmFacts:
    return SlurmFacts(state)


# (written status, squeue's entry, seconds since status.json was written) -> (shown state, final)
SLURM_CASES = [
    *[(slurm_status(final), job(entry), age, final, True) for final in WRITTEN_FINAL
      for entry in ("RUNNING", "PENDING", "gone", None) for age in (FRESH, SLURM_GONE_FOR_GOOD)],
    (slurm_status("running", beat=60), job("RUNNING"), 60, "running", False),  # a minute of NFS caching is not silence
    (slurm_status("running", beat=SLURM_STALE), job("RUNNING"), SLURM_STALE, "stalled", False),  # hung node
    (slurm_status("running", beat=SLURM_STALE), job(None), SLURM_STALE, "stalled", False),  # squeue did not answer
    (slurm_status("running"), job(None), FRESH, "running", False),
    (slurm_status("running"), job("gone"), FRESH, "running", False),  # missing from one answer while it beats: a blip
    (slurm_status("running", beat=SLURM_STALE), job("gone"), SLURM_STALE, "crashed", False),  # gone and silent
    (slurm_status("running", beat=SLURM_GONE_FOR_GOOD), job("gone"), SLURM_GONE_FOR_GOOD, "crashed", True),
    (slurm_status("running"), job("PENDING"), FRESH, "requeued", False),  # SLURM requeued it by itself (node failure)
    (slurm_status("queued", beat=None), job("PENDING"), SLURM_GONE_FOR_GOOD, "queued", False),  # held for hours
    (slurm_status("queued", beat=None), job("gone"), FRESH, "queued", False),  # just submitted, not yet in the answer
    (slurm_status("queued", beat=None), job("gone"), SLURM_STALE, "crashed", False),  # cancelled outside dmltui
    (slurm_status("requeued", beat=SLURM_GONE_FOR_GOOD), job("PENDING"), SLURM_STALE, "requeued", False),
    (slurm_status("requeued", beat=SLURM_STALE), job("RUNNING"), FRESH, "requeued", False),  # restarted, not yet running
    (slurm_status("requeued", beat=SLURM_GONE_FOR_GOOD), job("gone"), SLURM_GONE_FOR_GOOD, "crashed", True),
    (slurm_status("queued", beat=None, job=None), SlurmFacts(None, True), FRESH, "queued", False),  # being submitted
    (slurm_status("queued", beat=None, job=None), SlurmFacts("gone", False), FRESH, "crashed", True),  # submitter died
]


@pytest.mark.parametrize(("written", "facts", "age", "shown", "final"), SLURM_CASES)
def test_slurm_runs(written, facts, age, shown, final):
    derived = derive(written, facts, now=NOW, status_age=age)
    assert (derived.state, derived.final) == (shown, final)


def test_every_state_the_machine_shows_is_coloured_and_the_live_ones_are_not_resumable():
    shown = {case[2] for case in LOCAL_CASES} | {case[3] for case in SLURM_CASES}
    assert shown <= set(states.ALL_STATES) == set(states.STATE_COLOURS)
    assert not set(states.LIVE_STATES) & set(states.RESUMABLE_STATES)


def test_a_record_is_final_by_its_flag_and_an_older_record_by_its_written_state():
    assert states.is_final({"state": "crashed", "final": True})
    assert not states.is_final({"state": "crashed", "final": False})  # derived: stays in the live partition
    assert states.is_final({"state": "finished"}) and not states.is_final({"state": "running"})


def test_observe_reads_status_again_when_the_process_is_gone(tmp_path, monkeypatch):
    """A run that writes its final state and exits between the read of status.json and the pid check is read as it
    ended, never as crashed."""
    from dmltui import runs as run_ops
    from engine.rundir import RunDir

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    rd = RunDir(tmp_path)
    rd.update_status(state="running", pid=process.pid, host=os.uname().nodename, heartbeat_at=datetime.now(UTC).isoformat())
    real = states.local_facts

    def facts_after_the_run_ended(status, host):
        rd.update_status(state="finished")  # what the engine wrote just before it exited
        return real(status, host)

    monkeypatch.setattr(states, "local_facts", facts_after_the_run_ended)
    _, derived = run_ops.observe(tmp_path)
    assert derived.state == "finished" and derived.final


def test_a_sigstopped_engine_is_stalled_not_crashed_and_running_again_after_sigcont(tmp_path):
    from dmltui import runs as run_ops
    from engine.rundir import RunDir

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rd = RunDir(tmp_path)
        silent_since = (datetime.now(UTC) - timedelta(seconds=LOCAL_STALE)).isoformat()
        rd.update_status(state="running", pid=sleeper.pid, host=os.uname().nodename, heartbeat_at=silent_since)
        os.kill(sleeper.pid, signal.SIGSTOP)
        assert run_ops.observe(tmp_path)[1] == states.Derived("stalled", False, run_ops.observe(tmp_path)[1].reason)
        os.kill(sleeper.pid, signal.SIGCONT)
        rd.update_status(heartbeat_at=datetime.now(UTC).isoformat())  # it beats again
        assert run_ops.observe(tmp_path)[1].state == "running"
    finally:
        sleeper.kill()
        sleeper.wait()


# --------------------------------------------------------------------------- the engine's last write


@pytest.mark.parametrize(("signum", "stop_request", "expected"), [
    (signal.SIGTERM, None, ("stopped", True, None)),
    (signal.SIGUSR2, None, ("requeued", False, None)),  # SLURM's warning signal alone: checkpoint for a requeue
    (signal.SIGTERM, {"requeue": True, "reason": "SLURM"}, ("requeued", False, None)),  # the job wrapper asked
    (signal.SIGUSR2, {"requeue": False, "reason": "stopped by the user"}, ("stopped", True, "stopped by the user")),
    (signal.SIGTERM, {"requeue": False, "reason": "stopped by the user"}, ("stopped", True, "stopped by the user")),
])
def test_a_stop_ends_stopped_or_requeued_as_the_stop_request_says(signum, stop_request, expected):
    from engine.trainer import Outcome, final_state

    fields = final_state(Outcome("stopped", 3, {}, "interrupted" if stop_request is None else None), signum, stop_request)
    state, ended, error = expected
    assert fields["state"] == state and bool(fields["ended_at"]) == ended
    assert fields["error"] == (error if stop_request else (None if state == "requeued" else "interrupted"))
    assert final_state(Outcome("finished", 5, {}), signal.SIGUSR2, {"requeue": True})["state"] == "finished"


# --------------------------------------------------------------------------- the squeue cache


def test_an_squeue_answer_asked_before_forget_queue_is_never_cached(monkeypatch):
    """An squeue started before a submission and finished after forget_queue() is handed to its caller, not kept:
    the next caller asks again, and sees the new job."""
    started, release = threading.Event(), threading.Event()
    answers = iter([{}, {"9_0": slurm.QueuedJob("PENDING", "Priority", "")}])

    def slow_squeue():
        started.set()
        release.wait(5)
        return next(answers)

    monkeypatch.setattr(slurm, "_ask_squeue", slow_squeue)
    slurm.forget_queue()
    seen = []
    asker = threading.Thread(target=lambda: seen.append(slurm.queue()))
    asker.start()
    assert started.wait(5)
    slurm.forget_queue()  # sbatch returned meanwhile
    release.set()
    asker.join(5)
    assert seen == [{}]
    monkeypatch.setattr(slurm, "_ask_squeue", lambda: next(answers))
    assert "9_0" in slurm.queue()
    slurm.forget_queue()


# --------------------------------------------------------------------------- SLURM settings


@pytest.mark.parametrize(("option", "expected"), [
    ("--exclusive", {"exclusive": True}),
    ("--nice=10", {"nice": "10"}),
    ("--partition gpu", {"partition": "gpu"}),
    ("-p gpu", {"partition": "gpu"}),
    ("-pgpu", {"partition": "gpu"}),
    ("#SBATCH --gres=gpu:2", {"gres": "gpu:2"}),
    ("-C 'a100|h100'", {"constraint": "a100|h100"}),
    ("--mail-type=END", {"mail_type": "END"}),
])
def test_sbatch_options_long_short_and_spaced(option, expected):
    assert slurm.SlurmSettings(sbatch=[option]).sbatch_options() == expected


@pytest.mark.parametrize(("option", "named"), [("-% x", "-%"), ("gpu", "gpu"), ("--a b c", "--a b c")])
def test_a_malformed_sbatch_option_is_one_line_naming_it(option, named):
    with pytest.raises(slurm.SlurmError, match="slurm setting sbatch") as raised:
        slurm.SlurmSettings(sbatch=[option]).sbatch_options()
    assert named in str(raised.value) and "\n" not in str(raised.value)


def test_a_signal_delay_shorter_than_a_checkpoint_or_longer_than_a_slot_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("DMLTUI_CONFIG", str(tmp_path / "config.toml"))
    with pytest.raises(slurm.SlurmError, match="signal_delay = 30.*checkpoint_seconds = 60"):
        slurm.SlurmSettings.load(["signal_delay=30"])
    with pytest.raises(slurm.SlurmError, match=r"time = 2: .* at most 30 s .* time >= 3 minutes"):
        slurm.SlurmSettings.load(["time=2"])  # the default signal_delay (90 s) leaves 30 s of a 2-minute slot
    assert slurm.SlurmSettings.load(["time=1", "signal_delay=5", "checkpoint_seconds=5"]).time == 1
    assert slurm.SlurmSettings.load(["time=3"]).signal_delay == 90


def test_the_monitor_records_a_runs_facts_only_after_its_refresh_committed(tmp_path, monkeypatch):
    """A poll whose store transaction fails (busy) leaves the run to the next poll, which re-derives it: a held SLURM
    job's files never change, so a skipped run would otherwise keep its old state forever."""
    from dmltui import runs as run_ops
    from dmltui.monitor import RunsMonitor
    from dmltui.store import RunStore, StoreBusy
    from engine.rundir import RunDir

    store = RunStore(tmp_path / "runs.json", timeout=0.2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rd = RunDir(run_dir)
    rd.update_status(state="running", pid=os.getpid(), host=os.uname().nodename, heartbeat_at=datetime.now(UTC).isoformat())
    store.insert({"id": "20261206-120000-abcd", "name": "r", "state": "queued", "run_dir": str(run_dir),
                  "created_at": NOW.isoformat(), "pid": None, "best": {}, "tags": []})
    monitor = RunsMonitor(store=store)
    monitor.poll()
    assert monitor.records["20261206-120000-abcd"]["state"] == "running"
    rd.update_status(state="finished", ended_at=datetime.now(UTC).isoformat())
    real = run_ops.refresher

    def busy(jobs):
        raise StoreBusy("locked")

    monkeypatch.setattr(run_ops, "refresher", busy)
    with pytest.raises(StoreBusy):
        monitor.poll()
    monkeypatch.setattr(run_ops, "refresher", real)
    time.sleep(0.01)
    monitor.poll()
    assert monitor.records["20261206-120000-abcd"]["state"] == "finished"
