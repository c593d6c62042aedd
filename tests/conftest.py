from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One dataset cache per test session (the embedded sets are generated once)."""
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_worker():
    """pytest-xdist runs one worker per core: more torch threads than cores slow CPU kernels down many times."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, data_root, monkeypatch) -> Path:
    """Every test gets its own DMLTUI_HOME; nothing touches the user's real files."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the subprocesses the tests start, too
        monkeypatch.setenv(variable, "1")
    home = tmp_path / "home"
    monkeypatch.setenv("DMLTUI_HOME", str(home))
    monkeypatch.setenv("DMLTUI_DATA", str(data_root))
    monkeypatch.delenv("DMLTUI_PRESETS", raising=False)
    monkeypatch.delenv("DMLTUI_GPUS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return home


FAKE_NVML = REPO / "tests" / "fake_nvml"


@pytest.fixture
def fake_gpus(monkeypatch):
    """Make the dmltui processes a test starts see *count* GPUs through a stand-in NVML (tests/fake_nvml)."""

    def pretend(count: int) -> None:
        monkeypatch.setenv("FAKE_NVML_GPUS", str(count))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAKE_NVML), os.environ.get("PYTHONPATH")])))

    return pretend


def make_class_folders(images_dir: Path, n_classes: int, per_class: int, *, size=(40, 48), suffix=".jpg", seed=0,
                       numbered=True) -> list[str]:
    """Images whose colour and stripe pattern depend on the class (so they are learnable)."""
    rng = np.random.default_rng(seed)
    names = []
    for c in range(n_classes):
        name = f"{c + 1:03d}.Class_{c}" if numbered else f"Class_{chr(65 + c)}"
        folder = images_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, size=3)
        for i in range(per_class):
            h, w = size
            pixels = np.empty((h, w, 3), dtype=np.uint8)
            pixels[:] = base
            pixels[:, :: 2 + c % 4] = 255 - base
            pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i:03d}{suffix}")
        names.append(name)
    return names


TINY_PRESET = """\
description = "a run that takes seconds: digits at 8x8, one metric"
extends = ["quickstart", "digits"]
[data]
image_size = 8
[sampler]
batch_size = 128
[optim]
epochs = 2
[eval]
metrics = ["e_recall@1"]
at_start = false
raw_pixel_baseline = false
"""


@pytest.fixture
def tiny(isolated_env) -> str:
    """A user preset ``tiny`` (digits at 8x8, two epochs: seconds on a CPU) and ``tiny-cuda`` (the same on CUDA)."""
    presets = isolated_env / "presets"
    presets.mkdir(parents=True)
    (presets / "tiny.toml").write_text(TINY_PRESET)
    (presets / "tiny-cuda.toml").write_text('extends = ["tiny"]\n[run]\ndevice = "cuda"\n')
    return "tiny"


@pytest.fixture
def tiny_cub(tmp_path) -> Path:
    """A CUB200-layout dataset with 8 classes x 12 images; returns the data root (source_path)."""
    root = tmp_path / "data"
    make_class_folders(root / "cub200" / "images", 8, 12)
    return root


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a console entry point the way a user does (a fresh process)."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO,
        env={**os.environ, **(env or {})},
    )


def dmltui(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed `dmltui` console script (the real entry point)."""
    script = Path(sys.executable).with_name("dmltui")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


def ok(*args: str) -> subprocess.CompletedProcess:
    """``dmltui *args*``, which must exit 0 (its stderr is the failure's message)."""
    result = dmltui(*args)
    assert result.returncode == 0, result.stderr
    return result


def engine_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return run_cli("-m", "engine", *args, **kw)


async def tables_settled(pilot, timeout: float = 10.0) -> None:
    """Wait for the screen to stop changing: Textual measures table columns and scrolls to a cursor after the
    next idle moment or frame, which come late on a loaded machine, and a snapshot taken before that shows
    columns of the wrong width or the wrong rows. Settled = two screenshots 0.2 s apart are the same."""
    import time

    from textual.widgets import DataTable

    deadline = time.monotonic() + timeout
    while any(table._require_update_dimensions for table in pilot.app.screen.query(DataTable) if table.region.height):
        assert time.monotonic() < deadline, "the tables never measured their columns"
        await pilot.pause(0.05)
    await pilot.wait_for_scheduled_animations()
    previous = None
    while (current := pilot.app.export_screenshot()) != previous:
        assert time.monotonic() < deadline, "the screen never settled"
        previous = current
        await pilot.pause(0.2)


QUICKSTART_METRICS = "eval.metrics=['e_recall@1', 'e_recall@2', 'map_at_r', 'nmi']"


@pytest.fixture(scope="session")
def finished_quickstart(tmp_path_factory, data_root) -> Path:
    """The run directory of a finished `dmltui quickstart` (2 epochs on glyphs, map_at_r logged), made once per
    test worker. Tests that write into a run (caches, checkpoints) copy it first: see ``quickstart_copy``."""
    import json

    home = tmp_path_factory.mktemp("quickstart-home")
    result = dmltui("quickstart", "--set", "optim.epochs=2", "--set", QUICKSTART_METRICS, "--json", timeout=400,
                    env={"DMLTUI_HOME": str(home), "DMLTUI_DATA": str(data_root), "OMP_NUM_THREADS": "1",
                         "MKL_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    return Path(json.loads(result.stdout)["run_dir"])


@pytest.fixture
def quickstart_copy(finished_quickstart, tmp_path) -> Path:
    """A private copy of the finished quickstart run (file times kept, new inodes), not in any store."""
    import shutil

    return Path(shutil.copytree(finished_quickstart, tmp_path / "quickstart-run"))


@pytest.fixture
def slurm_home(tiny, isolated_env, tmp_path, monkeypatch):
    """A tiny preset, and a user config whose [slurm] table fits the one-node cluster (one CPU per run: two runs at
    once); the runs' and submitit's files are under the test's home (one node: its disk is 'shared')."""
    config = tmp_path / "config.toml"
    config.write_text("[slurm]\ncpus_per_task = 1\ntime = 30\n")
    monkeypatch.setenv("DMLTUI_CONFIG", str(config))
    yield isolated_env
    for run_dir in (isolated_env / "runs").glob("*"):  # no job of this test outlives it
        job = RunDir(run_dir).read_status().get("slurm_job_id")
        if job:
            subprocess.run(["scancel", "--full", str(job)], capture_output=True)
