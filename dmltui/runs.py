"""Run lifecycle operations shared by the CLI and (later) the TUI.

A run is prepared (run directory with config.toml and a ``queued`` status, then a
store document), launched as ``python -m engine --run-dir DIR`` (an argument list,
never a shell string), and reconciled: its state is derived from status.json, the
liveness of its pid and the age of its heartbeat, and its summary (state, epoch,
best metrics) is written back to the store.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dmltui import home
from dmltui.store import RunStore
from engine.config.presets import ResolvedConfig
from engine.rundir import FINAL_STATES, RunDir, best_metrics, now_iso

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
    try:
        run_dir = RunDir(staging)
        run_dir.write_config(resolved.to_toml())
        run_dir.update_status(state="queued", created_at=now_iso(), host=socket.gethostname(), epoch=0,
                              epochs=config.optim.epochs)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    record = {
        "id": run_id,
        "name": name or f"{resolved.preset or 'custom'}-s{config.run.seed}",
        "preset": resolved.preset,
        "presets": resolved.chain,
        "config": config.to_dict(),
        "dataset": config.data.dataset,
        "loss": config.loss.name,
        "miner": config.miner.name,
        "seed": config.run.seed,
        "state": "queued",
        "created_at": now_iso(),
        "started_at": None,
        "ended_at": None,
        "epoch": 0,
        "epochs": config.optim.epochs,
        "best": {},
        "run_dir": str(final),
        "host": socket.gethostname(),
        "pid": None,
        "tags": [],
        "notes": "",
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
    completed = subprocess.run(engine_command(record["run_dir"]), check=False)
    return completed.returncode


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age_seconds(timestamp: str | None, now: datetime) -> float | None:
    if not timestamp:
        return None
    return (now - datetime.fromisoformat(timestamp)).total_seconds()


def derive_state(status: dict[str, Any], *, now: datetime | None = None, this_host: str | None = None) -> str:
    """The state a reader should believe: written final states as is; a running run whose
    process is gone (same host) or whose heartbeat went silent is ``crashed``."""
    state = status.get("state", "queued")
    if state in FINAL_STATES or state == "queued":
        return state
    now = now or datetime.now(UTC)
    if status.get("host", this_host or socket.gethostname()) == (this_host or socket.gethostname()):
        if not pid_alive(status.get("pid")):
            return "crashed"
    age = _age_seconds(status.get("heartbeat_at"), now)
    if age is not None and age > STALE_HEARTBEAT_SECONDS:
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
        "best": best_metrics(rd.read_metrics()),
    }


def reconcile(run_id: str, store: RunStore | None = None) -> dict[str, Any]:
    store = store or open_store()
    record = store.get(run_id)
    if record is None:
        raise KeyError(run_id)
    return store.update(run_id, summarize(record["run_dir"]))
