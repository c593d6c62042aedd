"""GPU discovery and leases: one lease per GPU, held by the training process itself.

A lease is an exclusive ``flock`` on ``$DMLTUI_HOME/gpus/gpu<i>.lock``. The launcher
takes the leases, makes their descriptors inheritable and ``exec``s the engine, so the
lock lives exactly as long as the training process: the kernel releases it when that
process dies, however it dies (kill -9 included). Nothing has to clean up.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from dmltui import home


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_total_mb: int | None = None
    memory_used_mb: int | None = None
    utilization_pct: int | None = None


def gpus() -> list[GpuInfo]:
    """The GPUs of this machine with their memory and utilisation (NVML); none without an NVIDIA driver."""
    import pynvml  # nvidia-ml-py: a dependency, cheap to import, unlike torch

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver or no GPU
        return []
    try:
        infos = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            infos.append(
                GpuInfo(
                    index,
                    name.decode() if isinstance(name, bytes) else name,
                    memory.total // 2**20,
                    memory.used // 2**20,
                    pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                )
            )
        return infos
    finally:
        pynvml.nvmlShutdown()


def _allowed() -> list[int] | None:
    """``$DMLTUI_GPUS`` as indices (e.g. "0,2"; "" for none), or None when it is not set."""
    configured = os.environ.get("DMLTUI_GPUS")
    if configured is None:
        return None
    return parse_gpu_list(configured) if configured.strip() else []


def leasable_indices() -> list[int]:
    """GPU indices the manager may hand out: the GPUs this machine has, within ``$DMLTUI_GPUS`` when it is set."""
    existing = [info.index for info in gpus()]
    allowed = _allowed()
    return existing if allowed is None else [index for index in existing if index in allowed]


def visible_gpus_text() -> str:
    """What the manager may use, for error messages: 'this machine has GPUs 0, 1' or '... has no GPUs'."""
    existing = [info.index for info in gpus()]
    if not existing:
        return "this machine has no GPUs (NVML finds none)"
    text = f"this machine has GPU{'s' if len(existing) > 1 else ''} {', '.join(map(str, existing))}"
    allowed = _allowed()
    if allowed is not None:
        usable = [index for index in existing if index in allowed]
        text += f", of which $DMLTUI_GPUS={os.environ['DMLTUI_GPUS']!r} allows {', '.join(map(str, usable)) or 'none'}"
    return text


def parse_gpu_list(text: str) -> list[int]:
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"GPU list {text!r}: expected comma-separated indices such as 0,1") from None
    if any(i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"GPU list {text!r}: indices must be distinct and >= 0")
    return indices


def resolve_request(text: str | None, *, per_run: int = 1) -> str:
    """The ``--gpus`` request checked against this machine: 'auto', 'cpu' or indices such as '0,1'.

    None (not given) is 'auto' on a machine with GPUs and 'cpu' on one without. An explicit request that this
    machine cannot serve is a ValueError naming the GPUs it has: a typo must not mean days of CPU training."""
    text = None if text is None else text.strip()
    if text == "cpu":
        return "cpu"
    available = leasable_indices()
    if text is None:
        return "auto" if available else "cpu"
    if text == "auto":
        if not available:
            raise ValueError(f"--gpus auto: {visible_gpus_text()}; use --gpus cpu to train on the CPU")
        if per_run > len(available):
            raise ValueError(f"--gpus-per-run {per_run}: {visible_gpus_text()}")
        return "auto"
    missing = [index for index in parse_gpu_list(text) if index not in available]
    if missing:
        raise ValueError(f"--gpus {text}: no GPU {', '.join(map(str, missing))} here: {visible_gpus_text()}"
                         + ("" if available else "; use --gpus cpu to train on the CPU"))
    return text


def _lock_path(index: int) -> Path:
    folder = home.home() / "gpus"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"gpu{index}.lock"


def try_lease(index: int) -> int | None:
    """An open descriptor holding GPU *index*'s lease, or None when another run holds it."""
    fd = os.open(_lock_path(index), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_leased(index: int) -> bool:
    fd = try_lease(index)
    if fd is None:
        return True
    os.close(fd)
    return False


def lease(candidates: list[int], count: int, *, poll_seconds: float = 2.0, on_wait=None) -> dict[int, int]:
    """Block until *count* of *candidates* are free; returns {gpu index: lock descriptor}."""
    if count > len(candidates):
        raise ValueError(f"{count} GPU(s) requested but only {len(candidates)} may be leased ({candidates})")
    while True:
        held: dict[int, int] = {}
        for index in candidates:
            fd = try_lease(index)
            if fd is not None:
                held[index] = fd
                if len(held) == count:
                    return held
        for fd in held.values():  # all or nothing: never sit on a partial set
            os.close(fd)
        if on_wait is not None:
            on_wait()
        time.sleep(poll_seconds)


def usage(records: list[dict]) -> list[dict]:
    """Per GPU: index, name, utilisation, memory and the live runs holding its lease (``gpus`` in their status)."""
    holders: dict[int, list[str]] = {}
    for record in records:
        if record.get("state") in ("queued", "running"):
            for index in record.get("gpus") or []:
                holders.setdefault(index, []).append(record["name"])
    return [{"index": info.index, "name": info.name, "utilization_pct": info.utilization_pct,
             "memory_used_mb": info.memory_used_mb, "memory_total_mb": info.memory_total_mb,
             "runs": holders.get(info.index, [])} for info in gpus()]
