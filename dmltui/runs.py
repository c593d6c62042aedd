"""Run lifecycle operations shared by the CLI and (later) the TUI.

A run is prepared (run directory with config.toml and a ``queued`` status, then a
store document), launched as ``python -m engine --run-dir DIR`` (an argument list,
never a shell string), and reconciled: its state is derived from status.json, the
liveness of its pid and the age of its heartbeat, and its summary (state, epoch,
best metrics) is written back to the store.
"""

from __future__ import annotations

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
from dmltui.store import RunStore
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
    return RunStore(home.store_path())


def prepare_run(resolved: ResolvedConfig, *, name: str | None = None, store: RunStore | None = None,
                runs_root: Path | None = None) -> dict[str, Any]:
    """Create the run directory (complete or not at all) and record the run as ``queued``."""
    store = store or open_store()
    runs_root = runs_root or home.runs_dir()
    runs_root.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id()
    config = resolved.config
    staging = Path(tempfile.mkdtemp(prefix=f".{run_id}-", dir=runs_root))
    final = runs_root / run_id
    manager = {"id": run_id, "name": name or f"{resolved.preset or 'custom'}-s{config.run.seed}", "preset": resolved.preset,
               "presets": resolved.chain, "tags": [], "notes": "", "created_at": now_iso()}
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
    record = {
        **manager,
        "config": config.to_dict(),
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
    try:
        store.put(record)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)  # no run directory without its store record
        raise
    return record


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
    """Store fields derived from a run directory."""
    rd = RunDir(run_dir)
    status = rd.read_status()
    return {
        "state": derive_state(status),
        "pid": status.get("pid"),
        "started_at": status.get("started_at"),
        "ended_at": status.get("ended_at"),
        "epoch": status.get("epoch", 0),
        "epochs": status.get("epochs"),
        "error": status.get("error"),
        "gpus": status.get("gpus"),
        "best": best_metrics(rd.read_metrics()),
    }


def reconcile(run_id: str, store: RunStore | None = None) -> dict[str, Any]:
    store = store or open_store()
    record = store.get(run_id)
    if record is None:
        raise KeyError(run_id)
    return store.update(run_id, summarize(record["run_dir"]))


def reconcile_many(run_ids: list[str], store: RunStore | None = None,
                   records: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Reconcile several runs with one store write (the runs list refreshes all live runs at once);
    *records* are the stored runs when the caller has just read them."""
    store = store or open_store()
    records = {r["id"]: r for r in (records if records is not None else store.all())}
    changes = {}
    for run_id in run_ids:
        if run_id not in records:
            continue
        run_dir = records[run_id]["run_dir"]
        if Path(run_dir).is_dir():
            changes[run_id] = summarize(run_dir)
        else:
            changes[run_id] = {"state": "crashed", "error": f"run directory {run_dir} is gone"}
    return store.update_many(changes) if changes else []


# --------------------------------------------------------------------------- launching


class RunError(RuntimeError):
    """An operation that does not apply to the run in its current state."""


def launch_detached(record: dict[str, Any], *, gpus: str = "auto", count: int = 1, resume: bool = False) -> int:
    """Start the run's launcher in a new session (it survives this process and SIGHUP); returns its pid."""
    run_dir = Path(record["run_dir"])
    command = [sys.executable, "-m", "dmltui.worker", "--run-dir", str(run_dir), "--gpus", gpus, "--count", str(count)]
    if resume:
        command.append("--resume")
    with open(run_dir / "output.log", "ab") as output:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True)
    # status.json is the launcher's and the engine's to write (same pid: the launcher execs the engine)
    open_store().update(record["id"], {"pid": process.pid})
    return process.pid


def find(run_id: str, store: RunStore | None = None) -> dict[str, Any]:
    """The stored run with this id (or unique id prefix), reconciled; KeyError when none matches."""
    store = store or open_store()
    record = store.get(run_id)
    if record is None:
        matches = [r for r in store.all() if r["id"].startswith(run_id)]
        if len(matches) != 1:
            raise KeyError(run_id)
        record = matches[0]
    return reconcile(record["id"], store)


def stop(record: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
    """SIGTERM the run's process group (the engine checkpoints and ends ``stopped``); SIGKILL after *timeout*."""
    if record["state"] not in ("queued", "running"):
        raise RunError(f"run {record['id']} is {record['state']}; only queued or running runs can be stopped")
    rd = RunDir(record["run_dir"])
    status = rd.read_status()
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


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)  # the launcher started a new session: pid is the group id
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def resume(record: dict[str, Any], *, gpus: str = "auto", count: int = 1) -> dict[str, Any]:
    if record["state"] not in RESUMABLE_STATES:
        raise RunError(f"run {record['id']} is {record['state']}; resumable states: {', '.join(RESUMABLE_STATES)}")
    rd = RunDir(record["run_dir"])
    if not (rd.checkpoints / "last.pt").is_file():
        raise RunError(f"run {record['id']} has no checkpoint to resume from ({rd.checkpoints / 'last.pt'})")
    rd.update_status(state="queued", pid=None, ended_at=None, error=None)
    open_store().update(record["id"], {"state": "queued"})
    launch_detached(record, gpus=gpus, count=count, resume=True)
    return reconcile(record["id"])


def rerun(record: dict[str, Any], *, name: str | None = None, gpus: str = "auto") -> dict[str, Any]:
    """Start a new run with the same resolved config (detached); returns its reconciled record."""
    from engine.config.presets import ResolvedConfig
    from engine.config.schema import Config

    resolved = ResolvedConfig(config=Config.model_validate(record["config"]), chain=record.get("presets", []), sources={},
                              preset=record.get("preset"))
    new = prepare_run(resolved, name=name or record["name"])
    launch_detached(new, gpus=gpus)
    return reconcile(new["id"])


def remove(record: dict[str, Any], *, keep_files: bool = False) -> None:
    if record["state"] in ("queued", "running"):
        raise RunError(f"run {record['id']} is {record['state']}; stop it first")
    if not keep_files:
        shutil.rmtree(record["run_dir"], ignore_errors=True)
    open_store().remove(record["id"])


def annotate(record: dict[str, Any], *, add_tags: list[str] = (), remove_tags: list[str] = (),
             notes: str | None = None) -> dict[str, Any]:
    """Change tags/notes in the store and in the run dir's manager.json (so `db rebuild` keeps them)."""
    tags = [t for t in record.get("tags", []) if t not in remove_tags]
    tags += [t for t in add_tags if t not in tags]
    fields: dict[str, Any] = {"tags": tags}
    if notes is not None:
        fields["notes"] = notes
    manager_path = Path(record["run_dir"]) / MANAGER_FILE
    if manager_path.parent.is_dir():
        manager = json.loads(manager_path.read_text()) if manager_path.is_file() else {"id": record["id"]}
        atomic_write_json(manager_path, {**manager, **fields})
    return open_store().update(record["id"], fields)


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
        "config": config.to_dict(),
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
