"""Run lifecycle operations shared by the CLI, the TUI and scripts.

A run is prepared (run directory with config.toml and a ``queued`` status, then a
store document), launched as ``python -m engine --run-dir DIR`` (an argument list,
never a shell string), and reconciled: its state is derived by ``dmltui.states`` from
status.json and its executor's facts (pid, squeue entry, heartbeat age), and its summary
(state, epoch, best metrics) is written back to the store.

Every change to the store here is one ``RunStore.transaction()``, and every change of a
stored run is computed inside it from the record it replaces (``Transaction.modify``):
concurrent commands, the TUI and scripts never overwrite each other's changes. A
transaction reads and writes the store (and the small status files of the runs it
changes) only: squeue is asked before it and its answer passed in; submissions, launches
and deletions happen after it (check and mark under the lock, act, record the outcome),
and are undone when they fail.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dmltui import home, states
from dmltui.config_summary import config_changes, flatten, reference
from dmltui.executors import slurm
from dmltui.gpus import resolve_request
from dmltui.states import LIVE_STATES, RESUMABLE_STATES, pid_alive
from dmltui.store import RunStore, Transaction
from engine.io import atomic_write_json
from engine.rundir import RunDir, best_metrics, last_metrics, now_iso

if TYPE_CHECKING:  # the config modules import pydantic: kept off the read paths (runs list, the TUI's first paint)
    from engine.config.presets import ResolvedConfig
    from engine.config.schema import Config

MANAGER_FILE = "manager.json"  # the manager's own facts about a run (name, tags, notes), kept in its run dir
TRASH_DIR = ".trash"  # in the runs folder: a deleted run's directory, renamed there under the lock, deleted after it


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def open_store() -> RunStore:
    return RunStore(home.store_path(), timeout=home.store_timeout())


TAG_MAX = 64
NAME_MAX = 128
_SEED_SUFFIX = re.compile(r"[-_]s\d+$")


def check_tag(tag: str) -> str:
    """A tag is one word of at most 64 characters: no spaces (filters split on them), commas (lists join with them)
    or control characters; any script is fine. ValueError names the tag otherwise."""
    if not tag or len(tag) > TAG_MAX or any(c.isspace() or c == "," or not c.isprintable() for c in tag):
        raise ValueError(f"tag {_shown(tag)}: a tag is 1-{TAG_MAX} characters without spaces, commas or control characters")
    return tag


def check_name(name: str) -> str:
    """A run name is 1-128 printable characters (spaces and any script allowed), not blank."""
    if not name.strip() or len(name) > NAME_MAX or not name.isprintable():
        raise ValueError(f"run name {_shown(name)}: a name is 1-{NAME_MAX} printable characters, not blank")
    return name


def strip_seed(name: str) -> str:
    """``margin-b06-s3`` / ``margin_s3`` -> ``margin-b06`` / ``margin``: the name the runs of one config over seeds
    share (the paper groups runs by name this way)."""
    return _SEED_SUFFIX.sub("", name or "")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else f"{text[:40]}…") + (f" ({len(text)} characters)" if len(text) > 40 else "")


def named_for_wandb(config: Config, run_id: str, name: str, tags: list[str]) -> Config:
    """*config* with the W&B fields it leaves unset filled from the dmltui run, so that its W&B run (``log.online``)
    reads as this run: ``log.name`` its name, ``log.id`` its id, ``log.group`` (while the original's default) its name
    without the seed suffix (the seeds of one config group together), and its tags added to ``log.tags``."""
    log = config.log
    fields = type(log).model_fields
    filled = log.model_copy(update={
        "name": log.name or name,
        "id": log.id or run_id,
        "group": (strip_seed(name) or name) if log.group == fields["group"].default else log.group,
        "tags": list(dict.fromkeys([*log.tags, *tags])),
    })
    return config.model_copy(update={"log": filled})


def _make_run_dir(resolved: ResolvedConfig, name: str | None, tags: list[str], runs_root: Path) -> dict[str, Any]:
    """Create one run directory (complete or not at all); returns its store record."""
    import tomli_w

    run_id = new_run_id()
    name = name or f"{resolved.preset or 'custom'}-s{resolved.config.run.seed}"
    config = named_for_wandb(resolved.config, run_id, name, tags)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_id}-", dir=runs_root))
    final = runs_root / run_id
    manager = {"id": run_id, "name": name, "preset": resolved.preset,
               "presets": resolved.chain, "tags": list(tags), "notes": "", "created_at": now_iso()}
    try:
        run_dir = RunDir(staging)
        run_dir.write_config(tomli_w.dumps(config.to_dict()))
        atomic_write_json(staging / MANAGER_FILE, manager)
        run_dir.update_status(state="queued", created_at=now_iso(), host=socket.gethostname(), epoch=0,
                              epochs=config.optim.epochs, **launcher_fields())
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        **manager,
        "dataset": config.data.dataset,
        "loss": config.loss.name,
        "miner": config.miner.name,
        "seed": config.run.seed,
        "state": "queued",
        "started_at": None,
        "ended_at": None,
        "epoch": 0,
        "epochs": config.optim.epochs,
        "best": {},
        "last": {},
        "config_changes": config_changes(config.to_dict()),
        "run_dir": str(final),
        "host": socket.gethostname(),
        "pid": None,
    }


def prepare_runs(runs: list[tuple[ResolvedConfig, str | None]], *, tags: list[str] = (), store: RunStore | None = None,
                 runs_root: Path | None = None, run_tags: list[list[str]] | None = None) -> list[dict[str, Any]]:
    """Create the runs' directories and record them as ``queued`` in one store write. All or nothing: a failure
    (a full disk, a busy store) removes the directories already made. *tags* go on every run, *run_tags[i]* on the
    i-th run too."""
    run_tags = run_tags or [[] for _ in runs]
    for tag in [*tags, *(t for own in run_tags for t in own)]:
        check_tag(tag)
    for _, name in runs:
        if name is not None:
            check_name(name)
    store = store or open_store()
    runs_root = runs_root or home.runs_dir()
    runs_root.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    try:
        for (resolved, name), own in zip(runs, run_tags, strict=True):
            records.append(_make_run_dir(resolved, name, list(dict.fromkeys([*tags, *own])), runs_root))
        store.insert(*records)
    except BaseException:
        for record in records:  # no run directory without its store record
            shutil.rmtree(record["run_dir"], ignore_errors=True)
        raise
    return records


def prepare_run(resolved: ResolvedConfig, *, name: str | None = None, tags: list[str] = (), store: RunStore | None = None,
                runs_root: Path | None = None) -> dict[str, Any]:
    """One run of :func:`prepare_runs`."""
    return prepare_runs([(resolved, name)], tags=tags, store=store, runs_root=runs_root)[0]


def launcher_fields() -> dict[str, Any]:
    """status.json fields naming this process as the one that will start the run: until the run has a process (or a
    SLURM job) of its own, a dead launcher means it never will (``dmltui.states``)."""
    return {"launcher_pid": os.getpid(), "launcher_host": socket.gethostname()}


def engine_command(run_dir: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "engine", "--run-dir", str(run_dir)]


def run_foreground(record: dict[str, Any]) -> int:
    """Run the engine attached to this terminal (its progress bar shows); returns its exit code."""
    process = subprocess.Popen(engine_command(record["run_dir"]))
    try:
        return process.wait()
    except (KeyboardInterrupt, SystemExit):
        process.wait()  # the engine got the same Ctrl-C: let it checkpoint and end 'stopped'
        raise


def observe(run_dir: str | os.PathLike, jobs: dict[str, slurm.QueuedJob] | None = None
            ) -> tuple[dict[str, Any], states.Derived]:
    """The run's status.json and the state derived from it and its executor's facts (*jobs*: one squeue answer, asked
    before any lock; None: not asked or no answer, and nothing is concluded from the queue).

    The facts are observed after status.json is read, and it is read again when they say the process is gone: a
    run that wrote its final state and exited between the two is read as it ended, never as crashed."""
    rd = RunDir(run_dir)
    host = socket.gethostname()
    status = rd.read_status()
    for _ in range(3):
        facts = states.slurm_facts(status, jobs, host) if status.get("executor") == "slurm" else states.local_facts(status, host)
        try:
            status_age = time.time() - rd.status.stat().st_mtime
        except OSError:
            status_age = None
        derived = states.derive(status, facts, status_age=status_age)
        if derived.state != "crashed":
            break
        again = rd.read_status()
        if again == status:
            break
        status = again
    return status, derived


def summarize(run_dir: str | os.PathLike, jobs: dict[str, slurm.QueuedJob] | None = None) -> dict[str, Any]:
    """Store fields derived from a run directory (and, for a run on SLURM, from *jobs*, an squeue answer)."""
    status, derived = observe(run_dir, jobs)
    job = slurm.job_fields(status, jobs) if status.get("executor") == "slurm" else {}
    metrics = RunDir(run_dir).read_metrics()
    return {
        **job,
        "state": derived.state,
        "final": derived.final,
        "pid": status.get("pid"),
        "started_at": status.get("started_at"),
        "ended_at": status.get("ended_at"),
        "epoch": status.get("epoch", 0),
        "epochs": status.get("epochs"),
        "error": derived.reason,
        "gpus": status.get("gpus"),
        "best": best_metrics(metrics),
        "last": last_metrics(metrics),
    }


def queue_for(records: Iterable[dict[str, Any]]) -> dict[str, slurm.QueuedJob] | None:
    """One squeue answer when any of *records* is a SLURM run whose state can still change, else None. Asked before a
    store transaction, never inside one: squeue can take seconds on a busy cluster."""
    if any(record.get("executor") == "slurm" and not states.is_final(record) for record in records):
        return slurm.queue()
    return None


def load_config(record: dict[str, Any]) -> dict[str, Any]:
    """The run's resolved config, from its run directory's config.toml (the store keeps none; a run migrated from an
    older store whose directory was gone keeps its copy there). Empty when neither exists."""
    if record.get("config"):
        return record["config"]
    path = Path(record["run_dir"]) / "config.toml"
    try:
        stat = path.stat()
    except OSError:
        return {}
    return copy.deepcopy(_parsed_config(str(path), stat.st_mtime_ns, stat.st_size))


def config_value(record: dict[str, Any], key: str, default: Any = None) -> Any:
    """The run's value of a dotted config key (``optim.lr``), *default* where its config lacks it: from the
    summary's ``config_changes`` (no file read: tables group and select thousands of runs), else from its
    config.toml."""
    changes = record.get("config_changes")
    if changes is not None and not record.get("config"):
        value = changes[key] if key in changes else reference().get(key)
    else:
        value = flatten(load_config(record)).get(key)
    return default if value is None else value


@functools.lru_cache(maxsize=4096)
def _parsed_config(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """config.toml parsed once per (path, mtime, size): comparing hundreds of runs reads each file once."""
    import tomllib

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def refresher(jobs: dict[str, slurm.QueuedJob] | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A change function for ``Transaction.modify``: the record with its summary re-read from its run directory, the
    state derived with *jobs* (an squeue answer asked before the transaction). A live run whose directory is gone is
    ``crashed`` for good (``db rebuild`` would find it again); an ended one keeps what the store knew."""

    def refresh(record: dict[str, Any]) -> dict[str, Any]:
        run_dir = Path(record["run_dir"])
        if run_dir.is_dir():
            record.update(summarize(run_dir, jobs))
        elif not states.is_final(record):
            record.update(state="crashed", final=True, error=f"run directory {run_dir} is gone")
        return record

    return refresh


def reconcile(run_id: str, store: RunStore | None = None) -> dict[str, Any]:
    """The stored run refreshed from its run directory (written back only when it changed); KeyError when unknown."""
    store = store or open_store()
    refresh = refresher(queue_for(store.peek_live()))
    return store.modify(run_id, refresh)


def reconcile_many(run_ids: list[str], store: RunStore | None = None) -> list[dict[str, Any]]:
    """Reconcile several runs in one transaction (one write at most); unknown ids are skipped."""
    store = store or open_store()
    refresh = refresher(queue_for(store.peek_live()))
    with store.transaction() as tx:
        known = set(tx.ids())
        return [tx.modify(run_id, refresh) for run_id in run_ids if run_id in known]


class RunNotFound(KeyError):
    """No stored run has this id, and none starts with it."""

    def __str__(self) -> str:
        return f"no run with id {self.args[0]!r} (and no id starts with it)"


class AmbiguousRunId(KeyError):
    """Several stored runs start with this prefix."""

    def __init__(self, prefix: str, matches: list[str]):
        super().__init__(prefix, matches)
        self.prefix, self.matches = prefix, sorted(matches)

    def __str__(self) -> str:
        shown = ", ".join(self.matches[:10]) + (f" and {len(self.matches) - 10} more" if len(self.matches) > 10 else "")
        return f"{self.prefix!r} is the start of {len(self.matches)} run ids: {shown}; give more of the id"


def resolve_id(tx: Transaction, run_id: str) -> str:
    """The stored id that *run_id* is, or uniquely starts; RunNotFound or AmbiguousRunId otherwise."""
    ids = tx.ids()
    if run_id in ids:
        return run_id
    matches = [i for i in ids if i.startswith(run_id)]
    if not matches:
        raise RunNotFound(run_id)
    if len(matches) > 1:
        raise AmbiguousRunId(run_id, matches)
    return matches[0]


def find(run_id: str, store: RunStore | None = None) -> dict[str, Any]:
    """The stored run with this id (or unique id prefix), reconciled; RunNotFound or AmbiguousRunId (KeyErrors) otherwise."""
    store = store or open_store()
    refresh = refresher(queue_for(store.peek_live()))
    with store.transaction() as tx:
        return tx.modify(resolve_id(tx, run_id), refresh)


# --------------------------------------------------------------------------- launching


class RunError(RuntimeError):
    """An operation that does not apply to the run in its current state."""


def launch_detached(record: dict[str, Any], *, gpus: str = "cpu", count: int = 1, resume: bool = False) -> dict[str, Any]:
    """Start the run's launcher in a new session (it survives this process and SIGHUP); returns the record with
    its summary from the run directory (the store catches up at the next reconcile: a launch is one store write)."""
    run_dir = Path(record["run_dir"])
    command = [sys.executable, "-m", "dmltui.worker", "--run-dir", str(run_dir), "--gpus", gpus, "--count", str(count)]
    if resume:
        command.append("--resume")
    with open(run_dir / "output.log", "ab") as output:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True)
    # The launcher writes the same pid when it starts; written here too, a launcher that dies on start reads as crashed.
    RunDir(run_dir).update_status(pid=process.pid)
    return {**record, **summarize(run_dir)}


USER_STOP = {"requeue": False, "reason": "stopped by the user"}


def stop(record: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
    """SIGTERM the run's process group (the engine checkpoints and ends ``stopped``); SIGKILL after *timeout*.

    The stop is announced in status.json first (``stop_request``): the engine records why it stopped, and a SLURM
    warning signal arriving at the same moment does not turn the user's stop into a requeue."""
    if record["state"] not in LIVE_STATES:
        raise RunError(f"run {record['id']} is {record['state']}; only {', '.join(LIVE_STATES)} runs can be stopped")
    rd = RunDir(record["run_dir"])
    rd.update_status(stop_request=USER_STOP)
    status = rd.read_status()
    if status.get("executor") == "slurm":
        return _stop_slurm_job(record, rd, status, timeout)
    pid = status.get("pid")
    group = status.get("pgid") or pid  # torchrun runs: rank 0's pid differs from the launcher's group
    if pid and pid_alive(pid):
        _signal_group(group, signal.SIGTERM)
        _signal_group(group, signal.SIGCONT)  # a stalled (SIGSTOPped) engine handles the SIGTERM once it runs again
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            _signal_group(group, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
    _stopped_unless_final(rd, "stopped by the run manager before it checkpointed", pid=pid)
    return reconcile(record["id"])


def _stopped_unless_final(rd: RunDir, error: str, **incarnation: Any) -> None:
    """A run stopped before its engine could record it (killed, or stopped before it started) is ``stopped`` -- unless
    it is final, or a new process or job has taken it over since (*incarnation*: the pid or job id this stop ended;
    a resume that came meanwhile must not be overwritten)."""

    def still_ours(status: dict[str, Any]) -> bool:
        return status.get("state") not in states.WRITTEN_FINAL_STATES and all(
            status.get(key) == value for key, value in incarnation.items())

    rd.update_status(when=still_ours, state="stopped", ended_at=now_iso(), error=error)


def _stop_slurm_job(record: dict[str, Any], rd: RunDir, status: dict[str, Any], timeout: float) -> dict[str, Any]:
    """scancel the run's job; a running engine checkpoints on the SIGTERM SLURM sends. Waits until the job has left
    the queue (or *timeout*), then a run that never wrote a final state is ``stopped``."""
    try:
        slurm.cancel(status)
    except slurm.SlurmError as error:
        rd.update_status(stop_request=None)
        raise RunError(f"run {record['id']} was not stopped: {error}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        slurm.forget_queue()
        jobs = slurm.queue()
        if jobs is not None and str(status.get("slurm_job_id")) not in jobs:
            break
        time.sleep(0.5)
    _stopped_unless_final(rd, "stopped by the run manager (scancel) before it checkpointed",
                          slurm_job_id=status.get("slurm_job_id"))
    return reconcile(record["id"])


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)  # the launcher started a new session: pid is the group id
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


_MARK_KEYS = ("state", "ended_at", "error", "pid", "stop_request", "slurm_job_id", "launcher_pid", "launcher_host")


def resume(record: dict[str, Any], *, gpus: str | None = None, count: int = 1) -> dict[str, Any]:
    """Continue a run from its last checkpoint (detached) on *gpus* (``gpus.resolve_request``'s default when None),
    or, for a run on SLURM, as a new job with the settings it was submitted with.

    Check and mark in one store transaction (the run becomes ``queued``, launched by this process: two resumes of one
    run at once start it once), then launch or submit outside the lock; when that fails, for whatever reason, the
    run is put back as it was and the error raised (RunError for a refusal of SLURM or the OS)."""
    gpus = resolve_request(gpus, per_run=count)
    store = open_store()
    refresh = refresher(queue_for(store.peek_live()))
    with store.transaction() as tx:
        current = tx.modify(resolve_id(tx, record["id"]), refresh)
        if current["state"] not in RESUMABLE_STATES:
            raise RunError(f"run {current['id']} is {current['state']}; resumable states: {', '.join(RESUMABLE_STATES)}")
        rd = RunDir(current["run_dir"])
        if not (rd.checkpoints / "last.pt").is_file():
            raise RunError(f"run {current['id']} has no checkpoint to resume from ({rd.checkpoints / 'last.pt'})")
        before = rd.read_status()
        on_slurm = before.get("executor") == "slurm"
        settings = None
        if on_slurm:
            try:
                settings = slurm.SlurmSettings.of_run(before)
            except slurm.SlurmError as error:
                raise RunError(f"run {current['id']} was not resubmitted: {error}") from None
        # a new job (or process) is to come: until then this process vouches for the run (states: launcher)
        rd.update_status(state="queued", ended_at=None, error=None, pid=None, stop_request=None,
                         **({"slurm_job_id": None} if on_slurm else {}), **launcher_fields())
        current = tx.modify(current["id"], refresher(None))
    try:
        if settings is not None:
            slurm.submit([current["run_dir"]], settings, resume=True, processes=before.get("slurm_processes", 1))
        else:
            launch_detached(current, gpus=gpus, count=count, resume=True)
    except BaseException as error:
        rd.update_status(**{key: before.get(key) for key in _MARK_KEYS})  # nothing was started
        reconcile(current["id"], store)
        if isinstance(error, (slurm.SlurmError, OSError)):
            raise RunError(f"run {current['id']} was not {'resubmitted' if on_slurm else 'resumed'}: {error}") from None
        raise
    return reconcile(current["id"], store)


def rerun(record: dict[str, Any], *, name: str | None = None, gpus: str | None = None) -> dict[str, Any]:
    """Start a new run with the same resolved config where the run ran: detached on *gpus* (as for resume), or, for a
    run on SLURM, as a job with the settings it was submitted with and as many processes; returns its record."""
    status = RunDir(record["run_dir"]).read_status()
    try:
        settings = slurm.SlurmSettings.of_run(status) if status.get("executor") == "slurm" else None
    except slurm.SlurmError as error:
        raise RunError(f"run {record['id']} was not rerun: {error}") from None
    gpus = resolve_request(gpus) if settings is None else None
    from engine.config.presets import ResolvedConfig
    from engine.config.schema import Config

    config = copy.deepcopy(load_config(record))
    if not config:
        raise RunError(f"run {record['id']} has no config to rerun: {Path(record['run_dir']) / 'config.toml'} is gone")
    # W&B's name, id and tags of the run rerun, which dmltui filled in (named_for_wandb): the new run gets its own
    log = config.get("log", {})
    for key in ("name", "id"):
        log.pop(key, None)
    if "tags" in log:
        log["tags"] = [tag for tag in log["tags"] if tag not in record.get("tags", [])]
    resolved = ResolvedConfig(config=Config.model_validate(config), chain=record.get("presets", []), sources={},
                              preset=record.get("preset"))
    new = prepare_run(resolved, name=name or record["name"])
    try:
        if settings is None:
            return launch_detached(new, gpus=gpus)
        slurm.submit([new["run_dir"]], settings, processes=status.get("slurm_processes", 1))
    except BaseException as error:
        discard([new])  # nothing was started: no run is left behind
        if isinstance(error, (slurm.SlurmError, OSError)):
            raise RunError(f"run {record['id']} was not rerun: {error}") from None
        raise
    return {**new, **summarize(new["run_dir"])}


def remove(record: dict[str, Any], *, keep_files: bool = False) -> None:
    """Forget a run that is not live and, unless *keep_files*, delete its directory.

    Under the store's lock the state is checked, the directory renamed into the runs folder's trash (one rename:
    fast, and what makes the deletion all-or-nothing for `db rebuild`) and the record removed; the files are deleted
    after the lock is released. RunError when they cannot be (the run is forgotten; the message names where its
    files are)."""
    store = open_store()
    refresh = refresher(queue_for(store.peek_live()))
    trash: Path | None = None
    try:
        with store.transaction() as tx:
            current = tx.modify(resolve_id(tx, record["id"]), refresh)
            if current["state"] in LIVE_STATES:
                raise RunError(f"run {current['id']} is {current['state']}; stop it first")
            tx.remove(current["id"])
            if not keep_files:
                trash = _to_trash(Path(current["run_dir"]))
    except BaseException:
        if trash is not None:  # the store still knows the run: its directory comes back
            trash.rename(current["run_dir"])
        raise
    if trash is not None:
        _delete_trash(trash, current["id"])


def _to_trash(run_dir: Path) -> Path | None:
    """Rename *run_dir* into its folder's trash; None when it is already gone."""
    if not run_dir.exists():
        return None
    trash_root = run_dir.parent / TRASH_DIR
    trash_root.mkdir(exist_ok=True)
    target = trash_root / f"{run_dir.name}-{secrets.token_hex(3)}"
    run_dir.rename(target)
    return target


def _delete_trash(trash: Path, run_id: str) -> None:
    failures: list[str] = []
    shutil.rmtree(trash, onerror=lambda _function, path, info: failures.append(f"{path}: {info[1]}"))
    if failures:
        raise RunError(f"run {run_id} is forgotten, but its files could not all be deleted ({failures[0]}); "
                       f"what is left is in {trash}")
    try:
        trash.parent.rmdir()  # an empty trash goes too: the runs folder holds runs only
    except OSError:
        pass  # another deletion's files are still in it


def discard(records: list[dict[str, Any]]) -> None:
    """Forget runs that never started (their submission or launch failed) and delete their directories: renamed into
    the trash in one transaction, deleted after it."""
    trashed: list[tuple[Path, dict[str, Any]]] = []
    try:
        with open_store().transaction() as tx:
            for record in records:
                tx.remove(record["id"])
                trash = _to_trash(Path(record["run_dir"]))
                if trash is not None:
                    trashed.append((trash, record))
    except BaseException:
        for trash, record in trashed:  # nothing was forgotten: the directories come back
            trash.rename(record["run_dir"])
        raise
    for trash, record in trashed:
        _delete_trash(trash, record["id"])


def write_manager(record: dict[str, Any]) -> None:
    """Mirror the store's tags and notes into the run dir's manager.json (what `db rebuild` reads them from)."""
    path = Path(record["run_dir"]) / MANAGER_FILE
    if not path.parent.is_dir():
        return
    try:
        manager = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        manager = {key: record.get(key) for key in ("id", "name", "preset", "presets", "created_at")}
    atomic_write_json(path, {**manager, "tags": record.get("tags", []), "notes": record.get("notes", "")})


def annotate(record: dict[str, Any], *, add_tags: list[str] = (), remove_tags: list[str] = (),
             notes: str | None = None) -> dict[str, Any]:
    """Change a run's tags and notes from their current values: in the store and, in the same transaction (under
    its lock), in the run dir's manager.json. ValueError for a malformed tag."""
    for tag in add_tags:
        check_tag(tag)

    def change(current: dict[str, Any]) -> None:
        tags = [t for t in current.get("tags", []) if t not in remove_tags]
        current["tags"] = tags + [t for t in dict.fromkeys(add_tags) if t not in tags]
        if notes is not None:
            current["notes"] = notes

    with open_store().transaction() as tx:
        new = tx.modify(resolve_id(tx, record["id"]), change)
        tx.after_commit(lambda: write_manager(new))
    return new


def record_from_run_dir(run_dir: Path, jobs: dict[str, slurm.QueuedJob] | None = None) -> dict[str, Any]:
    """A store document rebuilt from a run directory alone (config.toml, status, metrics, manager.json)."""
    import tomllib

    from engine.config.schema import Config

    rd = RunDir(run_dir)
    raw_config = tomllib.loads(rd.config.read_text())
    config = Config.model_validate(raw_config)
    manager_path = run_dir / MANAGER_FILE
    manager = json.loads(manager_path.read_text()) if manager_path.is_file() else {}
    status = rd.read_status()
    record = {
        "id": manager.get("id") or new_run_id(),
        "name": manager.get("name") or run_dir.name,
        "preset": manager.get("preset"),
        "presets": manager.get("presets", []),
        "tags": manager.get("tags", []),
        "notes": manager.get("notes", ""),
        "created_at": manager.get("created_at") or status.get("created_at") or status.get("started_at") or now_iso(),
        "dataset": config.data.dataset,
        "loss": config.loss.name,
        "miner": config.miner.name,
        "seed": config.run.seed,
        "config_changes": config_changes(raw_config),  # what config.toml says, as `runs show` prints it
        "run_dir": str(run_dir.resolve()),
        "host": status.get("host") or socket.gethostname(),
        **summarize(run_dir, jobs),
    }
    if not manager_path.is_file():
        atomic_write_json(manager_path, {k: record[k] for k in ("id", "name", "preset", "presets", "tags", "notes", "created_at")})
    return record
