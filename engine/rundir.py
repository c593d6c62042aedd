"""The run directory protocol: everything a run leaves on disk (see docs/run-directory.md).

::

    <run dir>/
      config.toml     resolved config (written once, before training)
      status.json     state, pid, host, times, heartbeat, epoch (rewritten atomically)
      metrics.jsonl   one JSON object per line: kind, epoch, step, split, metrics
      train.log       human-readable log
      env.json        python/torch/CUDA versions, GPUs, git commit, host
      checkpoints/    last.pt and best_<split>_<metric>.pt (written atomically)

The engine writes it; the run manager only reads it (and, before it signals a stop, writes
``stop_request`` saying why). ``crashed`` and ``stalled`` are never written: readers derive
them from a dead pid, a job gone from the queue or a stale heartbeat (``dmltui.states``).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import platform
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.io import append_line, atomic_write_json, atomic_write_text, read_jsonl

# requeued: checkpointed at a SLURM time limit or preemption, waiting in the queue to resume (not final)
STATES = ("queued", "running", "requeued", "finished", "failed", "crashed", "stopped", "diverged")
FINAL_STATES = ("finished", "failed", "crashed", "stopped", "diverged")
HEARTBEAT_SECONDS = 2.0
STATUS_VERSION = 1


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class RunDir:
    """Paths and readers/writers of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config = self.path / "config.toml"
        self.status = self.path / "status.json"
        self.metrics = self.path / "metrics.jsonl"
        self.log = self.path / "train.log"
        self.env = self.path / "env.json"
        self.checkpoints = self.path / "checkpoints"
        self._lock = threading.Lock()

    def exists(self) -> bool:
        return self.config.is_file()

    # --- status -----------------------------------------------------------------
    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def update_status(self, when: Callable[[dict[str, Any]], bool] | None = None, **fields: Any) -> dict[str, Any]:
        """Merge *fields* into status.json (atomic rewrite; safe across threads and processes). With *when*, only if
        ``when(status)`` holds for the status read under the same lock (a check and a write no other writer can
        come between); returns the status as it is afterwards."""
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"state {fields['state']!r} is not one of {', '.join(STATES)}")
        with self._lock:  # threads of this process (the heartbeat)...
            directory = os.open(self.path, os.O_RDONLY)
            try:
                fcntl.flock(directory, fcntl.LOCK_EX)  # ...and other processes (launcher, run manager)
                status = self.read_status()
                if when is not None and not when(status):
                    return status
                status.update(fields, version=STATUS_VERSION)
                atomic_write_json(self.status, status)
                return status
            finally:
                os.close(directory)

    # --- metrics ----------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        append_line(self.metrics, json.dumps(_finite(record), sort_keys=True))

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics)

    def keep_metrics_until(self, epoch: int) -> None:
        """Drop the records of epochs after *epoch* (a resume replays them); atomic rewrite."""
        kept = [r for r in self.read_metrics() if r.get("epoch") is None or r["epoch"] <= epoch]
        atomic_write_text(self.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    # --- setup ------------------------------------------------------------------
    def write_config(self, toml_text: str) -> None:
        atomic_write_text(self.config, toml_text)

    def write_env(self) -> None:
        atomic_write_json(self.env, environment())


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def git_commit(path: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def environment() -> dict[str, Any]:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": gpus,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "argv": sys.argv,
        "time": now_iso(),
    }


class Heartbeat:
    """Rewrites ``heartbeat_at`` in status.json every few seconds from a daemon thread."""

    def __init__(self, run_dir: RunDir, interval: float = HEARTBEAT_SECONDS):
        self.run_dir = run_dir
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_dir.update_status(heartbeat_at=now_iso())

    def __enter__(self) -> Heartbeat:
        self.run_dir.update_status(heartbeat_at=now_iso())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def best_metrics(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Best value (max; min for losses) and its epoch of every scalar metric per split.

    Keys are ``<split>/<metric>``. Epoch 0 (the untrained network) is a reference, not a
    candidate, as in the trainer's checkpoint selection.
    """
    best: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("kind") not in ("eval", "train") or not record.get("epoch"):
            continue
        for name, value in record.get("metrics", {}).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            key = f"{record.get('split')}/{name}"
            lower_is_better = name == "loss" or name.startswith("loss")
            current = best.get(key)
            if current is None or (value < current["value"] if lower_is_better else value > current["value"]):
                best[key] = {"value": value, "epoch": record.get("epoch")}
    return best


def last_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """The value of every scalar metric per split at the split's last evaluated epoch, under the keys of
    :func:`best_metrics` (epoch 0 left out likewise). Values only: the store keeps one per metric and run."""
    last: dict[str, float] = {}
    for record in records:
        if record.get("kind") not in ("eval", "train") or not record.get("epoch"):
            continue
        for name, value in record.get("metrics", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                last[f"{record.get('split')}/{name}"] = value
    return last
