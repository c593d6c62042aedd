"""A stand-in for nvidia-ml-py's ``pynvml`` that reports ``$FAKE_NVML_GPUS`` GPUs (default 0).

Tests put this folder first on the PYTHONPATH of the dmltui processes they start, so that the run manager's GPU
discovery, leases and queue can be exercised on a machine without GPUs. The engine still trains on the CPU there
(the tests' presets say run.device = "cpu"), which is the only part NVML cannot fake.
"""

from __future__ import annotations

import os
from types import SimpleNamespace


class NVMLError(Exception):
    pass


def _count() -> int:
    return int(os.environ.get("FAKE_NVML_GPUS", "0"))


def nvmlInit() -> None:
    if _count() == 0:
        raise NVMLError("NVML Shared Library Not Found")


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return _count()


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < _count():
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return "Fake GPU"


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:
    return SimpleNamespace(total=80 * 2**30, used=2**30, free=79 * 2**30)


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:
    return SimpleNamespace(gpu=0, memory=0)


def nvmlSystemGetDriverVersion() -> str:
    return "550.54.15"


def nvmlSystemGetCudaDriverVersion() -> int:
    return 12040
