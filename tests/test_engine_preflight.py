"""Checks before a run (engine.preflight), and how the engine reports errors: one line on the terminal, exit codes,
nothing left on disk by a run that never started, tracebacks in train.log only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, engine_cli, make_class_folders

from engine import preflight, trainer
from engine.config.presets import resolve
from engine.config.schema import Config
from engine.rundir import RunDir

CPU_TINY = ["--preset", "quickstart", "--set", "optim.epochs=1", "--set", "data.image_size=16", "--set", "sampler.batch_size=16",
            "--set", "eval.at_start=false", "--set", "eval.raw_pixel_baseline=false"]
no_gpu_here = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA GPUs")


def config(*overrides: str) -> Config:
    return resolve(["quickstart", "digits"], list(overrides)).config


def cub_config(source: Path, *overrides: str) -> Config:
    return config("data.dataset='cub200'", f"data.source_path={str(source)!r}", *overrides)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stdout + result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


# ------------------------------------------------------------------ python -m engine


def test_missing_dataset_is_one_error_line_and_leaves_nothing_behind(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = engine_cli("--dataset", "cub200", "--source_path", "/nonexistent-data", "--n_epochs", "1", cwd=cwd)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == error_lines(result)
    [line] = error_lines(result)
    assert "dataset folder /nonexistent-data/cub200/images does not exist; expected <root>/<dataset>/images/" in line
    assert "data.source_path" in line
    assert list(cwd.iterdir()) == []  # no Training_Results/cub200/<run>

    fresh = tmp_path / "x"
    result = engine_cli("--dataset", "cub200", "--source_path", "/nonexistent-data", "--run-dir", str(fresh), cwd=cwd)
    assert result.returncode == 2 and len(error_lines(result)) == 1
    assert not fresh.exists() and list(cwd.iterdir()) == []


def test_missing_weights_file_is_an_error_naming_the_key(tiny_cub, tmp_path):
    weights = tmp_path / "missing.pt"
    result = engine_cli(*CPU_TINY, "--set", "data.dataset='cub200'", "--set", f"data.source_path={str(tiny_cub)!r}",
                        "--set", f"model.weights_path={str(weights)!r}", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert error_lines(result) == [f"error: model.weights_path={str(weights)!r} does not exist; set it to a file of "
                                   "pretrained weights (a torch state dict or .safetensors), or leave it unset"]
    assert not (tmp_path / "run").exists()


def test_a_save_path_that_cannot_be_created_is_an_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, so no folder can ever be made below it")
    result = engine_cli(*CPU_TINY, "--set", f"log.save_path={str(blocker / 'sub')!r}", cwd=tmp_path)
    assert result.returncode == 2
    [line] = error_lines(result)
    assert f"cannot create the results folder {blocker}/sub/glyphs (log.save_path=" in line
    assert f"{blocker} is a file, not a folder" in line
    result = engine_cli(*CPU_TINY, "--run-dir", str(blocker / "run"))
    assert result.returncode == 2
    assert error_lines(result) == [f"error: cannot create the run directory {blocker}/run: {blocker} is a file, not a folder"]


@no_gpu_here
@pytest.mark.parametrize(
    ("options", "env", "named"),
    [
        (["--set", "run.device='cuda'"], {}, "run.device='cuda'"),
        (["--set", "run.device='auto'", "--set", "run.gpus=[7]"], {}, "run.gpus=[7]"),
        (["--set", "run.device='auto'"], {"CUDA_VISIBLE_DEVICES": "7"}, "CUDA_VISIBLE_DEVICES='7'"),
    ],
)
def test_an_explicit_gpu_on_a_machine_without_one_is_an_error(tmp_path, monkeypatch, options, env, named):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    result = engine_cli(*CPU_TINY, *options, "--run-dir", str(tmp_path / "run"), env=env)
    assert result.returncode == 2
    [line] = error_lines(result)
    assert line.startswith(f"error: {named} asks for a GPU, but ") and "no CUDA GPU" in line
    assert not (tmp_path / "run").exists()


def test_a_prepared_run_records_the_problem_and_resume_runs_the_same_checks(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    rd.write_config(resolve(["quickstart"], ["data.dataset='cub200'", "data.source_path='/nonexistent-data'"]).to_toml())
    rd.update_status(state="queued")  # as the run manager prepares it
    result = engine_cli("--run-dir", str(rd.path))
    assert result.returncode == 2
    [line] = error_lines(result)
    assert "/nonexistent-data/cub200/images does not exist" in line
    status = rd.read_status()
    assert status["state"] == "failed" and status["error"] == line.removeprefix("error: ") and status["ended_at"]
    assert sorted(p.name for p in rd.path.iterdir()) == ["config.toml", "status.json"]

    rd.update_status(state="stopped", error=None)
    result = engine_cli("--run-dir", str(rd.path), "--resume")
    assert result.returncode == 2 and error_lines(result) == [line]
    assert rd.read_status()["state"] == "stopped"  # nothing resumed, nothing changed
    assert sorted(p.name for p in rd.path.iterdir()) == ["config.toml", "status.json"]


def test_a_failure_in_the_run_is_one_line_and_the_traceback_goes_to_train_log(tmp_path):
    source = tmp_path / "data"
    make_class_folders(source / "cub200" / "images", 4, 4)
    corrupt = source / "cub200" / "images" / "002.Class_1" / "img_001.jpg"
    corrupt.write_bytes(b"not a JPEG")  # the layout is right: only reading the image finds out
    run_dir = tmp_path / "run"
    result = engine_cli(*CPU_TINY, "--set", "data.dataset='cub200'", "--set", f"data.source_path={str(source)!r}",
                        "--set", "sampler.batch_size=8", "--set", "sampler.samples_per_class=2", "--run-dir", str(run_dir))
    assert result.returncode == 1
    rd = RunDir(run_dir)
    [line] = error_lines(result)
    assert line.startswith("error: run failed: UnidentifiedImageError: ") and str(corrupt) in line
    assert line.endswith(f"; traceback in {rd.log}")
    log = rd.log.read_text()
    assert "Traceback" in log and "UnidentifiedImageError" in log
    status = json.loads(rd.status.read_text())
    assert status["state"] == "failed" and status["error"].startswith("UnidentifiedImageError: ")
    assert "\n" not in status["error"]


# ------------------------------------------------------------------ the library


def test_a_multi_line_error_is_one_line_in_status_and_no_traceback_on_the_terminal(tmp_path, monkeypatch, capsys):
    def fail(self):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(trainer.Trainer, "build", fail)
    outcome = trainer.run(config(), tmp_path / "run", show_progress=False)
    assert outcome.state == "failed" and outcome.error == "RuntimeError: first line"
    assert RunDir(tmp_path / "run").read_status()["error"] == "RuntimeError: first line"
    assert "Traceback" not in capsys.readouterr().err
    log = RunDir(tmp_path / "run").log.read_text()
    assert "Traceback" in log and "second line" in log


def test_an_ok_config_has_no_problems(tiny_cub, tmp_path, monkeypatch, no_cuda):
    monkeypatch.chdir(tmp_path)
    assert preflight.problems(config()) == []
    assert preflight.problems(config(), tmp_path / "new" / "run") == []
    assert preflight.problems(cub_config(tiny_cub, "run.device='auto'")) == []  # auto may fall back to the CPU
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    assert preflight.problems(config(f"model.weights_path={str(weights)!r}")) == []


def test_dataset_layouts(tmp_path):
    [line] = preflight.problems(cub_config(tmp_path))
    assert line.startswith(f"dataset folder {tmp_path}/cub200/images does not exist; expected <root>/<dataset>/images/")
    images = tmp_path / "cub200" / "images"
    make_class_folders(images, 1, 2)
    assert preflight.problems(cub_config(tmp_path)) == [
        f"{images} has 1 class folder; at least 2 are needed for a train/test split"
    ]
    (images / "002.empty").mkdir()
    [line] = preflight.problems(cub_config(tmp_path))
    assert line.startswith(f"class folder {images}/002.empty holds no image files")
    assert preflight.problems(config("data.source_path='/nonexistent-data'")) == []  # embedded: generated on demand

    sop = tmp_path / "online_products"
    [line] = preflight.problems(config("data.dataset='online_products'", f"data.source_path={str(tmp_path)!r}"))
    assert line.startswith(f"missing {sop}/Info_Files/Ebay_train.txt; expected <root>/online_products/")
    (sop / "Info_Files").mkdir(parents=True)
    (sop / "Info_Files" / "Ebay_train.txt").write_text("image_id class_id super_class_id path\n")
    (sop / "Info_Files" / "Ebay_test.txt").write_text("id class\n")
    assert preflight.problems(config("data.dataset='online_products'", f"data.source_path={str(tmp_path)!r}")) == [
        f"{sop}/Info_Files/Ebay_test.txt: first line must be the header 'image_id class_id super_class_id path', got 'id class'"
    ]


def test_weights_path(tmp_path):
    assert preflight.problems(config(f"model.weights_path={str(tmp_path)!r}")) == [
        f"model.weights_path={str(tmp_path)!r} is a folder; set it to a file of pretrained weights (a torch state dict or .safetensors), "
        "or leave it unset"
    ]


def test_output_locations(tmp_path, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    assert preflight.problems(config(), blocker) == [f"cannot create the run directory {blocker}: {blocker} is a file, not a folder"]
    assert preflight.problems(config(f"log.save_path={str(blocker / 'a')!r}")) == [
        f"cannot create the results folder {blocker}/a/digits (log.save_path={str(blocker / 'a')!r}): "
        f"{blocker} is a file, not a folder"
    ]
    # Root may write anywhere, so a folder without write permission is simulated.
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: Path(path) != tmp_path)
    assert preflight.problems(config(), tmp_path / "new" / "run") == [
        f"cannot write to the run directory {tmp_path}/new/run: no write permission in {tmp_path}"
    ]


def test_devices_without_cuda(no_cuda, monkeypatch):
    none_here = "this machine has no CUDA GPUs; set run.device='cpu' to train on the CPU"
    assert preflight.problems(config("run.device='cuda'")) == [f"run.device='cuda' asks for a GPU, but {none_here}"]
    assert preflight.problems(config("run.device='auto'", "run.gpus=[7]")) == [f"run.gpus=[7] asks for a GPU, but {none_here}"]
    assert preflight.problems(config("run.device='cuda'"), check_device=False) == []
    assert preflight.problems(config("run.device='auto'")) == []  # nothing explicit: the CPU will do
    assert preflight.problems(config("run.device='cpu'", "run.gpus=[7]")) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    assert preflight.problems(config("run.device='auto'")) == [
        "CUDA_VISIBLE_DEVICES='7' asks for a GPU, but no CUDA GPU is visible; set run.device='cpu' to train on the CPU"
    ]
    assert preflight.problems(config("run.device='cpu'")) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a launcher's way of saying "the CPU"
    assert preflight.problems(config("run.device='auto'", "run.gpus=[7]")) == []


def test_devices_with_two_gpus(two_gpus, monkeypatch):
    assert preflight.problems(config("run.device='cuda'", "run.gpus=[1]")) == []
    assert preflight.problems(config("run.device='auto'", "run.gpus=[7, 0]")) == [
        "run.gpus=[7, 0] names GPU 7, which does not exist (GPUs 0-1 exist); list GPUs that exist, "
        "or set run.device='cpu' to train on the CPU"
    ]
    [line] = preflight.problems(config("run.device='auto'", "run.gpus=[2, 3]"))
    assert line.startswith("run.gpus=[2, 3] names GPUs 2, 3, which do not exist (GPUs 0-1 exist)")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    [line] = preflight.problems(config("run.device='cuda'", "run.gpus=[1]"))
    assert "(only GPU 0 exists)" in line
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # the launcher picked GPU 3: the run sees it as GPU 0
    assert preflight.problems(config("run.device='cuda'", "run.gpus=[1]")) == []


def test_resolve_device_never_falls_back_from_an_explicit_gpu(monkeypatch, no_cuda):
    assert trainer.resolve_device(config("run.device='auto'")) == torch.device("cpu")
    assert trainer.resolve_device(config("run.device='cpu'", "run.gpus=[7]")) == torch.device("cpu")
    for explicit in (["run.device='cuda'"], ["run.device='auto'", "run.gpus=[1]"]):
        with pytest.raises(trainer.DeviceError, match="asks for a GPU, but this machine has no CUDA GPUs"):
            trainer.resolve_device(config(*explicit))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(trainer.DeviceError, match="CUDA_VISIBLE_DEVICES='0'"):
        trainer.resolve_device(config("run.device='auto'"))


def test_resolve_device_on_a_gpu_machine(two_gpus, monkeypatch):
    assert trainer.resolve_device(config("run.device='auto'")) == torch.device("cuda", 0)
    assert trainer.resolve_device(config("run.device='auto'", "run.gpus=[1]")) == torch.device("cuda", 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert trainer.resolve_device(config("run.device='cuda'", "run.gpus=[1]")) == torch.device("cuda", 0)


def test_preflight_loads_torch_only_to_check_a_gpu(tmp_path):
    # A stand-in config: validating a real Config loads the loss registry, which imports torch.
    code = (
        "import sys, types\n"
        "from engine import preflight\n"
        "assert 'torch' not in sys.modules\n"
        "section = types.SimpleNamespace\n"
        f"config = section(data=section(dataset='cub200', source_path={str(tmp_path)!r}), model=section(weights_path=None),"
        f" log=section(save_path={str(tmp_path)!r}), run=section(device='auto', gpus=[0]))\n"
        "print(len(preflight.problems(config)), 'torch' in sys.modules)\n"
        "config.run.device = 'cuda'\n"
        "preflight.problems(config)\n"
        "print('torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, check=True)
    assert result.stdout.split() == ["1", "False", "True"]
