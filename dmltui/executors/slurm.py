"""Runs on a SLURM cluster, through submitit.

Each run is still ``python -m engine --run-dir DIR``: ``slurm_job.EngineJob``, a submitit ``Checkpointable``,
starts it as a child process on the compute node (its output goes to the run dir's train.log, not to
memory) and, when SLURM signals the end of the time limit or a preemption (submitit's SIGUSR2), sends it
SIGTERM, which makes the engine checkpoint exactly as it does when stopped, marks the run ``requeued``
and hands submitit the same call with ``resume=True`` to requeue. Several runs are one job array: one
``sbatch`` call.

The login node keeps the store. It learns a run's state from its run directory and from ``squeue``
(one call per listing, cached for a moment), never from ``sacct``, which needs an accounting database
that many clusters lack: a job that has left the queue is judged by its status.json alone. This module
supplies those facts (the queue, a run's job fields); ``dmltui.states`` alone turns them into a state.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dmltui import home
from engine.rundir import RunDir

SQUEUE_TTL_SECONDS = 2.0  # a listing of many runs asks squeue once
# sbatch's one-letter options, by their long names (what submitit's additional parameters take)
SBATCH_SHORT_OPTIONS = {
    "A": "account", "a": "array", "B": "extra-node-info", "b": "begin", "C": "constraint", "c": "cpus-per-task",
    "D": "chdir", "d": "dependency", "e": "error", "F": "nodefile", "G": "gpus", "H": "hold", "I": "immediate",
    "i": "input", "J": "job-name", "k": "no-kill", "L": "licenses", "M": "clusters", "m": "distribution",
    "N": "nodes", "n": "ntasks", "O": "overcommit", "o": "output", "p": "partition", "Q": "quiet", "q": "qos",
    "S": "core-spec", "s": "oversubscribe", "t": "time", "V": "version", "W": "wait", "w": "nodelist", "x": "exclude",
}


class SlurmError(RuntimeError):
    """SLURM cannot be used as asked (no sbatch, a bad setting, a refused submission); one line."""


@dataclass
class SlurmSettings:
    """The ``[slurm]`` table of the user's config file, with ``--slurm KEY=VALUE`` overrides on top."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: int = 24 * 60  # minutes
    gpus_per_task: int = 0
    cpus_per_task: int = 2
    mem_gb: float | None = None
    constraint: str | None = None
    sbatch: list[str] = field(default_factory=list)  # extra options, e.g. ["--exclusive", "--hold", "--nice=10"]
    setup: list[str] = field(default_factory=list)  # shell lines before the run, e.g. ["module load cuda/12.4"]
    folder: str | None = None  # submitit's files (pickles, job logs): must be on storage the nodes share
    signal_delay: int = 90  # seconds before the time limit at which SLURM signals the job to checkpoint
    # how long the engine may take, after the signal, to finish its batch, write last.pt and exit (the job waits this
    # long for it): signal_delay must be at least this
    checkpoint_seconds: int = 60
    max_requeues: int = 3  # time-outs after which a run is not requeued again

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def load(cls, overrides: list[str] = ()) -> SlurmSettings:
        """From the user config's [slurm] table and KEY=VALUE overrides; SlurmError naming a bad key or value."""
        table = dict(home.user_config().get("slurm", {}))
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep:
                raise SlurmError(f"--slurm {item!r}: expected KEY=VALUE, e.g. partition=gpu; keys: {', '.join(cls.keys())}")
            try:
                table[key.strip()] = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                table[key.strip()] = text  # a bare word: a string
        unknown = sorted(set(table) - set(cls.keys()))
        if unknown:
            raise SlurmError(f"slurm setting {unknown[0]!r} is unknown; settings: {', '.join(cls.keys())}")
        settings = cls()
        for spec in fields(cls):
            if spec.name not in table:
                continue
            value = table[spec.name]
            default = getattr(settings, spec.name)
            if isinstance(default, list) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise SlurmError(f"slurm setting {spec.name} = {value!r}: expected a list of strings")
            if isinstance(default, int) and not isinstance(default, bool) and (isinstance(value, bool) or not isinstance(value, int)
                                                                                or value < 0):
                raise SlurmError(f"slurm setting {spec.name} = {value!r}: expected a whole number >= 0")
            if spec.name == "mem_gb" and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise SlurmError(f"slurm setting mem_gb = {value!r}: expected a number of GB > 0")
            if spec.type == "str | None" and not isinstance(value, str):
                raise SlurmError(f"slurm setting {spec.name} = {value!r}: expected a string")
            setattr(settings, spec.name, value)
        if settings.time < 1:
            raise SlurmError("slurm setting time = 0: expected the time limit in minutes, >= 1")
        settings.check_slots()
        settings.sbatch_options()
        return settings

    def check_slots(self) -> None:
        """SlurmError unless the warning signal leaves the engine time to checkpoint, and a slot time to train."""
        if self.signal_delay < self.checkpoint_seconds:
            raise SlurmError(f"slurm setting signal_delay = {self.signal_delay}: the engine is given "
                             f"checkpoint_seconds = {self.checkpoint_seconds} s after the warning signal to checkpoint; "
                             f"expected signal_delay >= {self.checkpoint_seconds} (or a smaller checkpoint_seconds)")
        training = self.time * 60 - self.signal_delay
        if training < self.signal_delay:
            raise SlurmError(f"slurm setting time = {self.time}: with signal_delay = {self.signal_delay} s each slot "
                             f"trains for at most {max(training, 0)} s before it is signalled to checkpoint; expected "
                             f"time >= {-(-2 * self.signal_delay // 60)} minutes")

    def sbatch_options(self) -> dict[str, Any]:
        """The extra sbatch options as submitit's additional parameters: ``--key=value``, ``--key value``, ``--flag``,
        ``-p gpu`` or ``-pgpu`` (one-letter options by their long names). SlurmError for what is not an option."""
        extra: dict[str, Any] = {}
        for option in self.sbatch:
            words = shlex.split(option.removeprefix("#SBATCH"))
            if not words or not words[0].startswith("-") or len(words) > 2:
                raise SlurmError(f"slurm setting sbatch: {option!r} is not one sbatch option, e.g. '--exclusive', "
                                 "'--nice=10' or '-p gpu'")
            if words[0].startswith("--"):
                key, sep, value = words[0][2:].partition("=")
                value = value if sep else (words[1] if len(words) == 2 else True)
            else:
                letter, rest = words[0][1:2], words[0][2:]
                if letter not in SBATCH_SHORT_OPTIONS:
                    raise SlurmError(f"slurm setting sbatch: {option!r}: -{letter} is not an sbatch option")
                key = SBATCH_SHORT_OPTIONS[letter]
                value = rest.removeprefix("=") or (words[1] if len(words) == 2 else True)
            if not key:
                raise SlurmError(f"slurm setting sbatch: {option!r} has no option name")
            extra[key.replace("-", "_")] = value
        return extra

    @classmethod
    def of_run(cls, status: dict[str, Any]) -> SlurmSettings:
        """The settings a run was submitted with (its status.json keeps them: a resume or rerun asks for the same
        partition, time and resources, --slurm overrides included); the user config's for a run submitted before
        they were kept."""
        kept = status.get("slurm_settings")
        if not isinstance(kept, dict):
            return cls.load()
        return cls(**{key: value for key, value in kept.items() if key in cls.keys()})

    def job_folder(self) -> Path:
        return Path(self.folder).expanduser() if self.folder else home.home() / "slurm"

    def executor_parameters(self, processes: int = 1) -> dict[str, Any]:
        """submitit's update_parameters() arguments for one task per run. A run of *processes* training processes
        (torchrun in the task) asks for that many times the GPUs and CPUs of one: the settings are per process."""
        extra = self.sbatch_options()
        for key in ("account", "qos", "constraint"):
            if getattr(self, key):
                extra[key] = getattr(self, key)
        parameters: dict[str, Any] = {
            "timeout_min": self.time, "tasks_per_node": 1, "nodes": 1, "cpus_per_task": self.cpus_per_task * processes,
            "slurm_signal_delay_s": self.signal_delay,
            "slurm_setup": list(self.setup), "slurm_additional_parameters": extra, "name": "dmltui",
        }
        if self.partition:
            parameters["slurm_partition"] = self.partition
        if self.gpus_per_task:
            parameters["slurm_gpus_per_task"] = self.gpus_per_task * processes
        if self.mem_gb:
            parameters["mem_gb"] = self.mem_gb
        return parameters


def check_available() -> None:
    """SlurmError unless this machine can submit (sbatch and squeue on the PATH)."""
    for command in ("sbatch", "squeue", "scancel"):
        if shutil.which(command) is None:
            raise SlurmError(f"{command!r} is not on the PATH of this machine; run dmltui on the cluster's login node "
                             "(or load its slurm module)")


def submit(run_dirs: list[str], settings: SlurmSettings, *, resume: bool = False, processes: int = 1) -> list[str]:
    """Submit the runs as one job array (one sbatch call); returns each run's job id (``ARRAYID_INDEX``) and records
    it in the run's status.json, with the run's number of training processes (*processes* > 1: DDP under torchrun
    in the run's one task; a resume asks for as many again). SlurmError (one line) when sbatch refuses."""
    import submitit

    from dmltui.executors.slurm_job import EngineJob

    check_available()
    folder = settings.job_folder()
    folder.mkdir(parents=True, exist_ok=True)
    # Before sbatch: once it returns, the job may already run and write its own pid, host and node. Until its id is
    # recorded, the run has no job and the submitting process (launcher_pid) vouches for it.
    for run_dir in run_dirs:
        RunDir(run_dir).update_status(executor="slurm", slurm_job_id=None, slurm_folder=str(folder), host=None,
                                      pid=None, slurm_node=None, slurm_processes=processes,
                                      slurm_settings=asdict(settings), launcher_pid=os.getpid(),
                                      launcher_host=socket.gethostname())
    with tempfile.TemporaryFile() as stderr_copy, _stderr_to(stderr_copy):  # sbatch's own complaints: in our one line
        try:
            ids = _submit_array(submitit, EngineJob, folder, run_dirs, settings, resume, processes)
        except SlurmError as error:
            stderr_copy.seek(0)
            said = [line.strip() for line in stderr_copy.read().decode(errors="replace").splitlines() if line.strip()]
            raise SlurmError(f"{error}{' (' + said[0] + ')' if said and said[0] not in str(error) else ''}") from None
    forget_queue()
    for run_dir, job_id in zip(run_dirs, ids):
        RunDir(run_dir).update_status(slurm_job_id=job_id)
    return ids


@contextlib.contextmanager
def _stderr_to(file) -> Iterator[None]:
    """File descriptor 2 (what child processes such as sbatch write to) redirected to *file* for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(file.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _submit_array(submitit, job_type: type, folder: Path, run_dirs: list[str], settings: SlurmSettings,
                  resume: bool, processes: int) -> list[str]:
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm", slurm_max_num_timeout=settings.max_requeues)
        executor.update_parameters(slurm_array_parallelism=len(run_dirs), **settings.executor_parameters(processes))
        with executor.batch():
            jobs = [executor.submit(job_type(settings.checkpoint_seconds), run_dir, resume, processes) for run_dir in run_dirs]
    except Exception as error:  # submitit raises plain errors carrying sbatch's (or its own checks') message
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise SlurmError(f"SLURM refused the runs: {lines[-1] if lines else error}") from None
    return [str(job.job_id) for job in jobs]


# --------------------------------------------------------------------------- the queue, seen from the login node


@dataclass(frozen=True)
class QueuedJob:
    state: str  # PENDING, RUNNING, CONFIGURING, COMPLETING, REQUEUED...
    reason: str
    node: str


class _QueueCache:
    """The last squeue answer, shared by the threads of this process (the TUI's poll and its operations).

    ``forget`` bumps a generation: an answer from an squeue call that started before a submission or cancellation
    and ended after ``forget`` is returned to its caller but never cached, so no one reads a new job as missing
    from a stale answer. Stamped with the time the call started."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation = 0
        self.answer: tuple[int, float, dict[str, QueuedJob]] | None = None  # (generation, started, jobs)

    def get(self) -> dict[str, QueuedJob] | None:
        with self.lock:
            generation = self.generation
            if self.answer is not None and self.answer[0] == generation \
                    and time.monotonic() - self.answer[1] < SQUEUE_TTL_SECONDS:
                return self.answer[2]
        started = time.monotonic()
        jobs = _ask_squeue()
        if jobs is not None:
            with self.lock:
                if self.generation == generation:
                    self.answer = (generation, started, jobs)
        return jobs

    def forget(self) -> None:
        with self.lock:
            self.generation += 1
            self.answer = None


_queue_cache = _QueueCache()


def _ask_squeue() -> dict[str, QueuedJob] | None:
    if shutil.which("squeue") is None:
        return None
    try:
        result = subprocess.run(["squeue", "--me", "--array", "--noheader", "--format=%i|%T|%r|%N"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    jobs = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            jobs[parts[0]] = QueuedJob(parts[1], "" if parts[2] in ("None", "(null)") else parts[2], parts[3])
    return jobs


def queue() -> dict[str, QueuedJob] | None:
    """Job id (``123_4`` for array tasks) -> its squeue entry, for this user's jobs; None when squeue fails (then
    nothing is concluded from a job's absence). Cached for SQUEUE_TTL_SECONDS. Never called under the store's lock."""
    return _queue_cache.get()


def forget_queue() -> None:
    """Drop the cached squeue answer (after a submission or a cancellation), and any answer still being asked for."""
    _queue_cache.forget()


def job_fields(status: dict[str, Any], jobs: dict[str, QueuedJob] | None) -> dict[str, Any]:
    """What the store shows about the run's job: its id, SLURM state, pending reason and node."""
    job = (jobs or {}).get(str(status.get("slurm_job_id")))
    return {"executor": "slurm", "slurm_job_id": status.get("slurm_job_id"),
            "slurm_state": job.state if job else None, "slurm_reason": job.reason if job else None,
            "slurm_node": (job.node if job and job.node else None) or status.get("slurm_node")}


def cancel(status: dict[str, Any]) -> None:
    """scancel the run's job: a pending job leaves the queue; a running one gets SIGTERM (the engine checkpoints
    and ends ``stopped``), then SIGKILL after the cluster's KillWait."""
    check_available()
    job_id = str(status.get("slurm_job_id"))
    result = subprocess.run(["scancel", "--full", job_id], capture_output=True, text=True, timeout=60)
    forget_queue()
    if result.returncode != 0:
        raise SlurmError(f"scancel {job_id} failed: {result.stderr.strip() or result.returncode}")
