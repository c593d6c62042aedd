"""Run lifecycle operations shared by the CLI, the TUI and scripts.

A run is prepared (run directory with config.toml and a ``queued`` status, then a
store document), launched as ``python -m engine --run-dir DIR`` (an argument list,
never a shell string), and reconciled: its state is derived from status.json, the
liveness of its pid and the age of its heartbeat, and its summary (state, epoch,
best metrics) is written back to the store.

Every change to the store here is one ``RunStore.transaction()``, and every change of a
stored run is computed inside it from the record it replaces (``Transaction.modify``):
concurrent commands, the TUI and scripts never overwrite each other's changes.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dmltui import home
from dmltui.executors import slurm
from dmltui.gpus import resolve_request
from dmltui.store import RunStore, Transaction
from engine.io import atomic_write_json
from engine.rundir import FINAL_STATES, RunDir, best_metrics, now_iso

if TYPE_CHECKING:  # the config modules import pydantic: kept off the read paths (runs list, the TUI's first paint)
    from engine.config.presets import ResolvedConfig

MANAGER_FILE = "manager.json"  # the manager's own facts about a run (name, tags, notes), kept in its run dir
RESUMABLE_STATES = ("stopped", "crashed", "failed", "diverged")

# A live run rewrites its heartbeat every 2 s; this much silence means it is gone.
STALE_HEARTBEAT_SECONDS = 30.0


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def open_store() -> RunStore:
    return RunStore(home.store_path(), timeout=home.store_timeout())


TAG_MAX = 64
NAME_MAX = 128


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


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else f"{text[:40]}…") + (f" ({len(text)} characters)" if len(text) > 40 else "")


def _make_run_dir(resolved: ResolvedConfig, name: str | None, tags: list[str], runs_root: Path) -> dict[str, Any]:
    """Create one run directory (complete or not at all); returns its store record."""
    run_id = new_run_id()
    config = resolved.config
    staging = Path(tempfile.mkdtemp(prefix=f".{run_id}-", dir=runs_root))
    final = runs_root / run_id
    manager = {"id": run_id, "name": name or f"{resolved.preset or 'custom'}-s{config.run.seed}", "preset": resolved.preset,
               "presets": resolved.chain, "tags": list(tags), "notes": "", "created_at": now_iso()}
    try:
        run_dir = RunDir(staging)
        run_dir.write_config(resolved.to_toml())
        atomic_write_json(staging / MANAGER_FILE, manager)
        run_dir.update_status(state="queued", created_at=now_iso(), host=socket.gethostname(), epoch=0,
                              epochs=config.optim.epochs)
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


def pid_alive(pid: int | None) -> bool:
    """Whether process *pid* runs. A zombie (dead, not yet reaped by its parent, e.g. a run the TUI launched) is not alive."""
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


def _age_seconds(timestamp: str | None, now: datetime) -> float | None:
    if not timestamp:
        return None
    return (now - datetime.fromisoformat(timestamp)).total_seconds()


def derive_state(status: dict[str, Any], *, now: datetime | None = None, this_host: str | None = None) -> str:
    """The state a reader should believe: written final states as is; a running run (or a
    queued one whose launcher is waiting) whose process is gone on this host, or a running
    run whose heartbeat went silent, is ``crashed``."""
    state = status.get("state", "queued")
    if state in FINAL_STATES or (state == "queued" and not status.get("pid")):
        return state
    now = now or datetime.now(UTC)
    if status.get("host", this_host or socket.gethostname()) == (this_host or socket.gethostname()):
        if not pid_alive(status.get("pid")):
            return "crashed"
    age = _age_seconds(status.get("heartbeat_at"), now)
    if state == "running" and age is not None and age > STALE_HEARTBEAT_SECONDS:
        return "crashed"
    return state


def summarize(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Store fields derived from a run directory (and, for a run on SLURM, from squeue)."""
    rd = RunDir(run_dir)
    status = rd.read_status()
    job: dict[str, Any] = {}
    if status.get("executor") == "slurm":
        jobs = slurm.queue()
        state = slurm.derive_state(status, jobs)
        job = slurm.job_fields(status, jobs)
    else:
        state = derive_state(status)
    return {
        **job,
        "state": state,
        "pid": status.get("pid"),
        "started_at": status.get("started_at"),
        "ended_at": status.get("ended_at"),
        "epoch": status.get("epoch", 0),
        "epochs": status.get("epochs"),
        "error": status.get("error"),
        "gpus": status.get("gpus"),
        "best": best_metrics(rd.read_metrics()),
    }


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


@functools.lru_cache(maxsize=4096)
def _parsed_config(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """config.toml parsed once per (path, mtime, size): comparing hundreds of runs reads each file once."""
    import tomllib

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def refresh(record: dict[str, Any]) -> dict[str, Any]:
    """*record* with its summary re-read from its run directory (a change function for ``Transaction.modify``).
    A live run whose directory is gone is ``crashed``; an ended one keeps what the store knew."""
    run_dir = Path(record["run_dir"])
    if run_dir.is_dir():
        record.update(summarize(run_dir))
    elif record.get("state") not in FINAL_STATES:
        record.update(state="crashed", error=f"run directory {run_dir} is gone")
    return record


def reconcile(run_id: str, store: RunStore | None = None) -> dict[str, Any]:
    """The stored run refreshed from its run directory (written back only when it changed); KeyError when unknown."""
    return (store or open_store()).modify(run_id, refresh)


def reconcile_many(run_ids: list[str], store: RunStore | None = None) -> list[dict[str, Any]]:
    """Reconcile several runs in one transaction (one write at most); unknown ids are skipped."""
    with (store or open_store()).transaction() as tx:
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
    with (store or open_store()).transaction() as tx:
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


def stop(record: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
    """SIGTERM the run's process group (the engine checkpoints and ends ``stopped``); SIGKILL after *timeout*."""
    if record["state"] not in ("queued", "running", "requeued"):
        raise RunError(f"run {record['id']} is {record['state']}; only queued or running runs can be stopped")
    rd = RunDir(record["run_dir"])
    status = rd.read_status()
    if status.get("executor") == "slurm":
        return _stop_slurm_job(record, rd, status, timeout)
    pid = status.get("pid")
    group = status.get("pgid") or pid  # torchrun runs: rank 0's pid differs from the launcher's group
    if pid and pid_alive(pid):
        _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            _signal_group(group, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
    if rd.read_status().get("state") not in FINAL_STATES:  # killed, or stopped before the engine started
        rd.update_status(state="stopped", ended_at=now_iso(), error="stopped by the run manager before it checkpointed")
    return reconcile(record["id"])


def _stop_slurm_job(record: dict[str, Any], rd: RunDir, status: dict[str, Any], timeout: float) -> dict[str, Any]:
    """scancel the run's job; a running engine checkpoints on the SIGTERM SLURM sends. Waits until the job has left
    the queue (or *timeout*), then a run that never wrote a final state is ``stopped``."""
    try:
        slurm.cancel(status)
    except slurm.SlurmError as error:
        raise RunError(f"run {record['id']} was not stopped: {error}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        slurm.forget_queue()
        jobs = slurm.queue()
        if jobs is not None and str(status.get("slurm_job_id")) not in jobs:
            break
        time.sleep(0.5)
    if rd.read_status().get("state") not in FINAL_STATES:
        rd.update_status(state="stopped", ended_at=now_iso(), error="stopped by the run manager (scancel) before it checkpointed")
    return reconcile(record["id"])


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)  # the launcher started a new session: pid is the group id
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def resume(record: dict[str, Any], *, gpus: str | None = None, count: int = 1) -> dict[str, Any]:
    """Continue a run from its last checkpoint (detached) on *gpus* (``gpus.resolve_request``'s default when None).
    Its state is checked and the launcher started in one store transaction, so two resumes of one run at once
    start it once."""
    gpus = resolve_request(gpus, per_run=count)
    with open_store().transaction() as tx:
        current = tx.modify(resolve_id(tx, record["id"]), refresh)
        if current["state"] not in RESUMABLE_STATES:
            raise RunError(f"run {current['id']} is {current['state']}; resumable states: {', '.join(RESUMABLE_STATES)}")
        rd = RunDir(current["run_dir"])
        if not (rd.checkpoints / "last.pt").is_file():
            raise RunError(f"run {current['id']} has no checkpoint to resume from ({rd.checkpoints / 'last.pt'})")
        status = rd.read_status()
        if status.get("executor") == "slurm":  # back to the cluster, as one job of as many processes as before
            try:
                settings = slurm.SlurmSettings.of_run(status)
                rd.update_status(state="queued", ended_at=None, error=None)  # before the job can start and say running
                slurm.submit([current["run_dir"]], settings, resume=True, processes=status.get("slurm_processes", 1))
            except slurm.SlurmError as error:
                rd.update_status(**{key: status.get(key) for key in ("state", "ended_at", "error")})  # nothing submitted
                raise RunError(f"run {current['id']} was not resubmitted: {error}") from None
        else:
            rd.update_status(state="queued", pid=None, ended_at=None, error=None)
            launch_detached(current, gpus=gpus, count=count, resume=True)
        return tx.modify(current["id"], refresh)


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

    config = load_config(record)
    if not config:
        raise RunError(f"run {record['id']} has no config to rerun: {Path(record['run_dir']) / 'config.toml'} is gone")
    resolved = ResolvedConfig(config=Config.model_validate(config), chain=record.get("presets", []), sources={},
                              preset=record.get("preset"))
    new = prepare_run(resolved, name=name or record["name"])
    if settings is None:
        return launch_detached(new, gpus=gpus)
    try:
        slurm.submit([new["run_dir"]], settings, processes=status.get("slurm_processes", 1))
    except slurm.SlurmError as error:
        discard([new])  # nothing was submitted: no run is left behind
        raise RunError(f"run {record['id']} was not rerun: {error}") from None
    return {**new, **summarize(new["run_dir"])}


def remove(record: dict[str, Any], *, keep_files: bool = False) -> None:
    """Forget a run that is not live and, unless *keep_files*, delete its directory; decided under the store's lock."""
    with open_store().transaction() as tx:
        current = tx.modify(resolve_id(tx, record["id"]), refresh)
        if current["state"] in ("queued", "running", "requeued"):
            raise RunError(f"run {current['id']} is {current['state']}; stop it first")
        tx.remove(current["id"])
        if not keep_files:
            tx.after_commit(lambda: shutil.rmtree(current["run_dir"], ignore_errors=True))


def discard(records: list[dict[str, Any]]) -> None:
    """Forget runs that never started (their submission failed) and delete their directories, in one transaction."""
    with open_store().transaction() as tx:
        for record in records:
            tx.remove(record["id"])
        tx.after_commit(lambda: [shutil.rmtree(record["run_dir"], ignore_errors=True) for record in records])


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


def record_from_run_dir(run_dir: Path) -> dict[str, Any]:
    """A store document rebuilt from a run directory alone (config.toml, status, metrics, manager.json)."""
    import tomllib

    from engine.config.schema import Config

    rd = RunDir(run_dir)
    config = Config.model_validate(tomllib.loads(rd.config.read_text()))
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
        "run_dir": str(run_dir.resolve()),
        "host": status.get("host") or socket.gethostname(),
        **summarize(run_dir),
    }
    if not manager_path.is_file():
        atomic_write_json(manager_path, {k: record[k] for k in ("id", "name", "preset", "presets", "tags", "notes", "created_at")})
    return record
