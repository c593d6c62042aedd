"""The run state machine: the one place that decides what state a run is in.

Written states come from the run directory's status.json, and only their writers may end a run: the engine
(``finished``, ``failed``, ``diverged``, ``stopped``, or ``requeued`` when SLURM's warning signal made it checkpoint
for a requeue), dmltui's launcher (``failed`` when the GPUs it was asked for do not exist), the SLURM job wrapper
(``stopped`` when a time limit finds the run out of requeues) and a user's stop (``stopped``). A reader never writes
a state; it *derives* the one to show from what it can observe, the executor's facts:

- a local run: whether its pid is alive (on this host; on another host nothing can be checked) and the age of its
  heartbeat;
- a run on SLURM: its entry in one ``squeue`` answer (or no answer), and the age of its status.json.

Derived states are reversible. ``stalled`` (alive but silent: pid alive or job RUNNING, heartbeat stale) and
``crashed`` while the run could still come back are re-derived at every reading; a run judged crashed that beats
again shows ``running``, and ends as it really ends. A derivation is *final* (the store files the run as ended
and stops re-checking it) only when the run dir says final, or when the run is provably gone for good: its pid is
dead on this host, or its SLURM job has left the queue and nothing has written its status.json for
``SLURM_SETTLE_SECONDS``.

===========  ===========================================================  ==========  ======
state        meaning                                                      live        final
===========  ===========================================================  ==========  ======
queued       prepared, launching, waiting for GPU leases or in the queue  yes         no
running      training, heartbeat fresh                                    yes         no
requeued     checkpointed at a time limit or preemption, job queued       yes         no
stalled      process alive (or job RUNNING) but heartbeat stale           yes         no
crashed      no process and no final state                                no          when proven
finished     all epochs done (written)                                    no          yes
failed       an exception; or a launch that could not start (written)     no          yes
diverged     the loss became NaN or infinite (written)                    no          yes
stopped      SIGTERM / a user's stop / out of requeues (written)          no          yes
===========  ===========================================================  ==========  ======

*Live* states are those a user can stop, and that cannot be resumed or deleted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.rundir import FINAL_STATES as WRITTEN_FINAL_STATES

LIVE_STATES = ("queued", "running", "requeued", "stalled")
STATE_COLOURS = {"queued": "cyan", "requeued": "cyan", "running": "yellow", "stalled": "bright_yellow", "finished": "green",
                 "failed": "red", "crashed": "red", "stopped": "magenta", "diverged": "red"}  # ANSI names: a 16-colour terminal tells them apart
RESUMABLE_STATES = ("stopped", "crashed", "failed", "diverged")
ALL_STATES = (*LIVE_STATES, "crashed", *(s for s in WRITTEN_FINAL_STATES if s != "crashed"))

# A local engine rewrites its heartbeat every 2 s; 30 s of silence is not a slow epoch but a stopped process.
LOCAL_STALE_SECONDS = 30.0
# A compute node's status.json reaches the login node through the shared file system's attribute caches (NFS: up to
# 60 s by default) and across two clocks: four times the local rule before a silent run counts as silent.
SLURM_STALE_SECONDS = 120.0
# A run on another host (its pid cannot be checked) silent this long is taken for crashed (still re-checked).
OTHER_HOST_LOST_SECONDS = 600.0
# A SLURM job gone from the queue, with nothing written to its run dir for this long, is gone for good: squeue drops
# a job at most MinJobAge (300 s by default) after it ended, and a requeued job keeps its id while it waits.
SLURM_SETTLE_SECONDS = 600.0


@dataclass(frozen=True)
class Derived:
    """What a reader should believe about a run: its state, whether that can still change, and why (for derived
    states and written ones that carry an error)."""

    state: str
    final: bool
    reason: str | None = None


@dataclass(frozen=True)
class LocalFacts:
    """What can be observed of a run on this machine: its pid's liveness (None: no pid, or another host's)."""

    pid_alive: bool | None
    launcher_alive: bool | None = None  # the dmltui process that prepared it, while no process of its own exists


@dataclass(frozen=True)
class SlurmFacts:
    """What one squeue answer says of the run's job: None when squeue did not answer (nothing is concluded),
    else its state (``PENDING``, ``RUNNING``...) or ``"gone"`` when the job is not in the answer."""

    job: str | None
    launcher_alive: bool | None = None  # while the run has no job id yet (being submitted)


def age_seconds(timestamp: str | None, now: datetime) -> float | None:
    if not timestamp:
        return None
    moment = datetime.fromisoformat(timestamp)
    return (now - (moment if moment.tzinfo else moment.replace(tzinfo=UTC))).total_seconds()


def stale_seconds(executor: str | None) -> float:
    """How long a heartbeat may be silent before the run counts as silent, per executor kind."""
    return SLURM_STALE_SECONDS if executor == "slurm" else LOCAL_STALE_SECONDS


def derive(status: dict[str, Any], facts: LocalFacts | SlurmFacts, *, now: datetime | None = None,
           status_age: float | None = None) -> Derived:
    """The state to show for a run whose status.json reads *status*, given its executor's *facts*.

    *status_age*: seconds since status.json was last written (its mtime), which bounds the silence of a run that
    writes no heartbeat (queued, requeued); defaults to the heartbeat's age."""
    state = status.get("state", "queued")
    error = status.get("error")
    if state in WRITTEN_FINAL_STATES:
        return Derived(state, True, error)
    now = now or datetime.now(UTC)
    beat_age = age_seconds(status.get("heartbeat_at"), now)
    silence = beat_age if status_age is None else status_age
    if isinstance(facts, SlurmFacts):
        return _derive_slurm(status, state, facts, beat_age, silence)
    return _derive_local(status, state, facts, beat_age)


def _silent_for(age: float | None) -> str:
    return f"heartbeat silent for {age:.0f} s" if age is not None else "no heartbeat"


def _not_started(status: dict[str, Any], state: str, launcher_alive: bool | None, what: str) -> Derived:
    """A run that has no process (or job) of its own yet: the dmltui process preparing it vouches for it."""
    if launcher_alive is False:
        pid = status.get("launcher_pid")
        return Derived("crashed", True, f"never {what}: the dmltui process (pid {pid}) that was starting it ended first")
    return Derived(state, False, None)


def _derive_local(status: dict[str, Any], state: str, facts: LocalFacts, beat_age: float | None) -> Derived:
    if not status.get("pid"):
        return _not_started(status, state, facts.launcher_alive, "started")
    if facts.pid_alive is False:
        return Derived("crashed", True, f"its process (pid {status['pid']}) ended without writing a final state")
    stale = beat_age is not None and beat_age > LOCAL_STALE_SECONDS
    if state != "running" or not stale:
        return Derived(state, False, None)
    if facts.pid_alive:
        return Derived("stalled", False, f"process {status['pid']} alive, {_silent_for(beat_age)}")
    # another host: its pid cannot be checked; silent is stalled, long silent is taken for crashed (re-checked)
    if beat_age > OTHER_HOST_LOST_SECONDS:
        return Derived("crashed", False, f"on {status.get('host')}: {_silent_for(beat_age)}")
    return Derived("stalled", False, f"on {status.get('host')}: {_silent_for(beat_age)}")


def _derive_slurm(status: dict[str, Any], state: str, facts: SlurmFacts, beat_age: float | None,
                  silence: float | None) -> Derived:
    if not status.get("slurm_job_id"):
        return _not_started(status, state, facts.launcher_alive, "submitted")
    job = facts.job
    job_id = status["slurm_job_id"]
    if job is None:  # squeue did not answer: the run dir alone, and a running run's heartbeat
        if state == "running" and beat_age is not None and beat_age > SLURM_STALE_SECONDS:
            return Derived("stalled", False, f"{_silent_for(beat_age)}; squeue did not answer")
        return Derived(state, False, None)
    if job == "gone":
        if silence is None or silence <= SLURM_STALE_SECONDS:  # just ended (its final write is on its way) or a blip
            return Derived(state, False, None)
        settled = silence > SLURM_SETTLE_SECONDS
        return Derived("crashed", settled, f"job {job_id} has left the queue; run dir silent for {silence:.0f} s")
    if job in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD"):
        # a job SLURM requeued by itself (node failure) while the run said running: it will resume
        return Derived("requeued" if state == "running" else state, False, None)
    if state == "running" and beat_age is not None and beat_age > SLURM_STALE_SECONDS:
        return Derived("stalled", False, f"job {job_id} {job}, {_silent_for(beat_age)}")
    return Derived(state, False, None)


# --------------------------------------------------------------------------- observing the facts


def pid_alive(pid: int | None) -> bool:
    """Whether process *pid* runs. A zombie (dead, not yet reaped by its parent, e.g. a run the TUI launched) is not
    alive; a stopped one (SIGSTOP) is."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs (macOS): trust the signal check
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def local_facts(status: dict[str, Any], this_host: str) -> LocalFacts:
    here = status.get("host", this_host) == this_host
    pid = status.get("pid")
    launcher = status.get("launcher_pid")
    launcher_here = status.get("launcher_host", this_host) == this_host
    return LocalFacts(pid_alive=pid_alive(pid) if pid and here else None,
                      launcher_alive=pid_alive(launcher) if launcher and launcher_here else None)


def slurm_facts(status: dict[str, Any], jobs: dict[str, Any] | None, this_host: str) -> SlurmFacts:
    launcher = status.get("launcher_pid")
    launcher_here = status.get("launcher_host", this_host) == this_host
    launcher_alive = pid_alive(launcher) if launcher and launcher_here else None
    if jobs is None:
        return SlurmFacts(None, launcher_alive)
    entry = jobs.get(str(status.get("slurm_job_id")))
    return SlurmFacts(entry.state if entry is not None else "gone", launcher_alive)


def is_final(record: dict[str, Any]) -> bool:
    """Whether a stored run's state can no longer change by itself (the store files it as ended). Records written
    before derived states carried ``final`` count their written-final states as final."""
    final = record.get("final")
    return final if isinstance(final, bool) else record.get("state") in WRITTEN_FINAL_STATES


def is_live(state: str) -> bool:
    return state in LIVE_STATES
