"""End-to-end runs of the engine: run directory contents, state transitions, stop, divergence, determinism."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import REPO, engine_cli

from engine import trainer
from engine.config.presets import resolve
from engine.config.schema import Config
from engine.rundir import STATES, RunDir

FAST = ["optim.epochs=2", "sampler.batch_size=16", "sampler.samples_per_class=4", "eval.metrics=['e_recall@1', 'e_recall@2', 'nmi']"]


def digits_config(*overrides: str) -> Config:
    return resolve(["quickstart", "digits"], [*FAST, "data.image_size=16", *overrides]).config


def test_legacy_flags_run_on_a_cub_layout_dataset(tiny_cub, tmp_path):
    save = tmp_path / "results"
    result = engine_cli(
        "--dataset", "cub200", "--source", str(tiny_cub), "--arch", "smallcnn_normalize", "--not_pretrained",
        "--n_epochs", "2", "--bs", "16", "--samples_per_class", "4", "--kernels", "0", "--embed_dim", "32",
        "--lr", "0.001", "--evaluation_metrics", "e_recall@1", "e_recall@2", "nmi", "--seed", "3",
        "--save_path", str(save), "--set", "run.device=cpu", "--set", "data.image_size=32",
    )
    assert result.returncode == 0, result.stderr
    runs = list((save / "cub200").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("CUB200_smallcnn_normalize_")
    rd = RunDir(runs[0])

    config = Config.model_validate(tomllib.loads(rd.config.read_text()))
    assert (config.data.dataset, config.optim.epochs, config.run.seed, config.model.pretrained) == ("cub200", 2, 3, False)
    assert config.eval.metrics == ["e_recall@1", "e_recall@2", "nmi"]

    status = rd.read_status()
    assert status["state"] == "finished" and status["epoch"] == 2 and status["epochs"] == 2
    assert status["pid"] > 0 and status["host"] and status["started_at"] < status["ended_at"]
    assert status["heartbeat_at"] and status["error"] is None

    records = rd.read_metrics()
    train = [r for r in records if r["kind"] == "train"]
    assert [r["epoch"] for r in train] == [1, 2]
    assert all(r["metrics"]["loss"] >= 0 and r["metrics"]["batches"] == 48 // 16 for r in train)
    evals = {(r["split"], r["epoch"]) for r in records if r["kind"] == "eval"}
    assert evals == {("test", 1), ("train", 1), ("test", 2), ("train", 2)}  # original: train metrics too
    assert all(set(r["metrics"]) == {"e_recall@1", "e_recall@2", "nmi"} for r in records if r["kind"] == "eval")
    assert all(json.loads(line) for line in rd.metrics.read_text().splitlines())
    assert [r["step"] for r in train] == [3, 6]

    env = json.loads(rd.env.read_text())
    assert {"python", "torch", "cuda", "gpus", "host", "git_commit"} <= set(env)
    log = rd.log.read_text()
    assert "epoch 2/2" in log and "run finished" in log

    names = sorted(p.name for p in rd.checkpoints.iterdir())
    assert names == ["best_test_e_recall@1.pt", "last.pt"]
    state = torch.load(rd.checkpoints / "last.pt", weights_only=False)
    assert state["epoch"] == 2 and {"model", "optimizer", "loss", "scheduler", "rng", "config"} <= set(state)
    assert state["loss"]["beta"].shape == (4,)  # one learnable beta per training class
    assert not list(rd.path.rglob(".tmp-*"))


def test_state_goes_queued_running_finished_and_reaches_the_store(tiny_cub, isolated_env):
    from dmltui import runs

    resolved = resolve(
        ["quickstart"],
        [*FAST, "data.dataset=cub200", f"data.source_path={str(tiny_cub)!r}", "optim.epochs=3"],
    )
    record = runs.prepare_run(resolved, name="tiny")
    rd = RunDir(record["run_dir"])
    assert rd.read_status()["state"] == "queued" and runs.open_store().get(record["id"])["state"] == "queued"
    seen = []
    process = subprocess.Popen(runs.engine_command(rd.path), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None:
        state = rd.read_status().get("state")
        if not seen or seen[-1] != state:
            seen.append(state)
        time.sleep(0.02)
    seen.append(rd.read_status()["state"])
    assert process.returncode == 0
    assert seen[0] == "queued" and "running" in seen and seen[-1] == "finished"
    assert all(s in STATES for s in seen)
    stored = runs.reconcile(record["id"])
    assert stored["state"] == "finished" and stored["epoch"] == 3
    best = stored["best"]["test/e_recall@1"]
    assert 0 <= best["value"] <= 1 and 1 <= best["epoch"] <= 3


def test_divergence_stops_the_run_with_state_diverged(tmp_path, monkeypatch):
    from engine.losses.margin import MarginLoss

    monkeypatch.setattr(MarginLoss, "compute", lambda self, embeddings, labels: embeddings.sum() * float("nan"))
    outcome = trainer.run(digits_config(), tmp_path / "run", show_progress=False)
    assert outcome.state == "diverged"
    status = RunDir(tmp_path / "run").read_status()
    assert status["state"] == "diverged" and "nan at epoch 1, step 1" in status["error"]


def test_a_divergence_is_reported_at_its_exact_step_though_losses_are_read_back_in_blocks(tmp_path, monkeypatch):
    """The step losses stay on the device and are checked every LOSS_SYNC_STEPS steps (engine.step_losses): the
    error still names the first step whose loss was NaN, and no checkpoint holds the weights trained on it."""
    from engine.losses.margin import MarginLoss

    calls = {"n": 0}
    compute = MarginLoss.compute

    def nan_from_step_7(self, embeddings, labels):
        calls["n"] += 1
        loss = compute(self, embeddings, labels)
        return loss * float("nan") if calls["n"] >= 7 else loss

    monkeypatch.setattr(MarginLoss, "compute", nan_from_step_7)
    outcome = trainer.run(digits_config(), tmp_path / "run", show_progress=False)
    assert outcome.state == "diverged"
    status = RunDir(tmp_path / "run").read_status()
    assert re.search(r"loss became nan at epoch \d+, step 7$", status["error"]), status["error"]
    assert 7 < calls["n"] <= 7 + trainer.LOSS_SYNC_STEPS  # it trained on, up to the block's end, and no further
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists() or \
        torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["step"] < 7


def test_a_failing_run_ends_failed_with_the_error(tmp_path):
    config = digits_config("data.source_path='/nonexistent/place'", "data.dataset=cub200")
    outcome = trainer.run(config, tmp_path / "run", show_progress=False)
    status = RunDir(tmp_path / "run").read_status()
    assert outcome.state == status["state"] == "failed"
    assert "/nonexistent/place/cub200/images does not exist" in status["error"]
    assert "expected <root>/<dataset>/images/<class folder>" in status["error"]


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    def metrics(seed: int, name: str) -> list:
        trainer.run(digits_config(f"run.seed={seed}"), tmp_path / name, show_progress=False)
        return [r["metrics"] for r in RunDir(tmp_path / name).read_metrics() if r["kind"] in ("eval", "train")
                and "epoch_time_s" not in r["metrics"]]

    first, second, other = metrics(5, "a"), metrics(5, "b"), metrics(6, "c")
    assert first == second
    assert first != other


def test_sigterm_checkpoints_and_ends_stopped(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "--preset", "quickstart", "--preset", "digits", "--set", "optim.epochs=500",
         "--set", "data.image_size=16", "--run-dir", str(run_dir)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    rd = RunDir(run_dir)
    deadline = time.monotonic() + 120
    while rd.read_status().get("epoch", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    status = rd.read_status()
    assert status["state"] == "stopped" and status["ended_at"]
    state = torch.load(rd.checkpoints / "last.pt", weights_only=False)
    assert state["epoch"] >= 1


def test_existing_run_dir_config_is_the_configuration(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    rd.write_config(resolve(["quickstart", "digits"], [*FAST, "optim.epochs=1"]).to_toml())
    conflict = engine_cli("--run-dir", str(rd.path), "--set", "optim.epochs=3")
    assert conflict.returncode == 2 and "config.toml exists" in conflict.stderr
    printed = engine_cli("--run-dir", str(rd.path), "--print-config")
    assert printed.returncode == 0 and tomllib.loads(printed.stdout)["optim"]["epochs"] == 1
    rd.config.write_text("[optim]\nepochs = 0\n")
    invalid = engine_cli("--run-dir", str(rd.path))
    assert invalid.returncode == 2
    assert invalid.stderr.strip() == f"error: {rd.config}: optim.epochs = 0: Input should be greater than or equal to 1"


@pytest.mark.parametrize("argv", [["--loss_margin_betta", "0.6"], ["--sourc", "x"], ["stray"]])
def test_unknown_or_abbreviated_flags_are_errors(argv):
    result = engine_cli(*argv, "--print-config")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def _comparable(run_dir: Path) -> list:
    return [
        (r["kind"], r["epoch"], r["split"], {k: v for k, v in r["metrics"].items() if k != "epoch_time_s"})
        for r in RunDir(run_dir).read_metrics()
    ]


@pytest.mark.parametrize(  # 7 batches per epoch: at the boundary and inside epoch 2
    "stop_after_batches", [pytest.param(7, marks=pytest.mark.slow), 10]
)
def test_resume_continues_exactly(tmp_path, monkeypatch, stop_after_batches):
    config = digits_config("optim.epochs=3", "sampler.batch_size=128", "data.augmentation='small'", "eval.at_start=true")
    trainer.run(config, tmp_path / "straight", show_progress=False)

    calls = {"n": 0}

    def stop_after(self) -> bool:
        calls["n"] += 1
        return calls["n"] >= stop_after_batches

    with monkeypatch.context() as patch:
        patch.setattr(trainer.StopRequested, "__bool__", stop_after)
        first = trainer.run(config, tmp_path / "resumed", show_progress=False)
    assert first.state == "stopped"
    checkpoint = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=False)
    # a stop after the epoch's last batch still precedes its evaluation: the epoch is resumed with 0 batches left
    assert (checkpoint["epoch"], checkpoint["batch_in_epoch"]) == ((stop_after_batches - 1) // 7, (stop_after_batches - 1) % 7 + 1)
    second = trainer.run(config, tmp_path / "resumed", show_progress=False, resume=True)
    assert second.state == "finished" and second.epoch == 3
    assert _comparable(tmp_path / "resumed") == _comparable(tmp_path / "straight")
    status = RunDir(tmp_path / "resumed").read_status()
    assert status["state"] == "finished" and status["resumed_at"] and status["best"] == first.best | second.best


def test_resume_errors(tmp_path):
    config = digits_config("optim.epochs=1")
    with pytest.raises(trainer.ResumeError, match="nothing to resume"):
        trainer.run(config, tmp_path / "fresh", show_progress=False, resume=True)
    trainer.run(config, tmp_path / "done", show_progress=False)
    with pytest.raises(trainer.ResumeError, match="already trained all 1 epochs"):
        trainer.run(config, tmp_path / "done", show_progress=False, resume=True)


def test_amp_channels_last_clipping_cosine_and_compile_switches(tmp_path, monkeypatch):
    compiled, clipped = [], []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: clipped.append(max_norm) or real_clip(params, max_norm))
    config = digits_config("run.amp='bf16'", "run.channels_last=true", "run.compile=true", "optim.grad_clip=0.5",
                           "optim.scheduler='cosine'", "optim.epochs=2", "optim.lr=0.01")
    outcome = trainer.run(config, tmp_path / "run", show_progress=False)
    assert outcome.state == "finished"
    assert len(compiled) == 1 and clipped and set(clipped) == {0.5}
    train = [r["metrics"] for r in RunDir(tmp_path / "run").read_metrics() if r["kind"] == "train"]
    assert train[0]["lr"] == pytest.approx(0.01) and train[1]["lr"] == pytest.approx(0.005)  # cosine over 2 epochs
    evals = [r["metrics"]["e_recall@1"] for r in RunDir(tmp_path / "run").read_metrics() if r["kind"] == "eval"]
    assert all(0 <= v <= 1 for v in evals)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert "scaler" in state


def test_wandb_offline_run_directory_and_no_key_stored(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = digits_config("log.online=true", "log.project='dml-test'", "log.group='margin'", "optim.epochs=1", "run.seed=3")
    outcome = trainer.run(config, tmp_path / "run", show_progress=False)
    assert outcome.state == "finished"
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    [events] = offline[0].glob("run-*.wandb")  # the offline event file wandb sync would upload
    content = events.read_bytes()
    assert b"margin_s3" in content and b"dml-test" in content and b"e_recall@1" in content
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file() and path.suffix in (".toml", ".json", ".jsonl", ".log", ".yaml"):
            assert "a" * 40 not in path.read_text(errors="ignore"), path


DDP_PROBE = '''"""The engine's CLI, recording what its loss sees at every step (the global batch's labels) and at the first step its
input and value and the gradients the optimizer is about to apply (after DDP's all-reduce); into
$PROBE_OUT-rank<RANK>.pt when the engine is done."""
import os
import runpy
import sys

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from engine.losses.base import DMLLoss

seen = {"labels": []}


def loss_seen(module, inputs, output):
    if isinstance(module, DMLLoss):
        seen["labels"].append(inputs[1].detach().clone())
        if "loss" not in seen:
            seen.update(embeddings=inputs[0].detach().clone(), loss=float(output))


def step_seen(optimizer, args, kwargs):
    if "grads" not in seen:
        seen["grads"] = [p.grad.detach().clone() for group in optimizer.param_groups for p in group["params"]
                         if p.grad is not None]


torch.nn.modules.module.register_module_forward_hook(loss_seen)
register_optimizer_step_pre_hook(step_seen)
sys.argv = ["engine", *sys.argv[1:]]
try:
    runpy.run_module("engine", run_name="__main__", alter_sys=True)
finally:
    torch.save(seen, f"{os.environ['PROBE_OUT']}-rank{os.environ.get('RANK', '0')}.pt")
'''


@pytest.mark.slow
def test_two_process_ddp_on_cpu_matches_one_process(tmp_path):
    """gloo DDP: gathered embeddings + summed gradients give the single-process update.

    The maths says 'identical' for a deterministic loss (no miner randomness), frozen BN (no per-rank batch
    statistics), no augmentation and plain SGD; Adam would turn float rounding in near-zero gradients into
    visible differences, so it is not part of the equality check.
    """
    common = ["--preset", "quickstart", "--preset", "digits", "--set", "optim.epochs=2", "--set", "sampler.batch_size=64",
              "--set", "model.arch='smallcnn_frozen_normalize'", "--set", "data.image_size=8", "--set", "run.device='cpu'",
              "--set", "loss.name='multisimilarity'", "--set", "optim.name='sgd'", "--set", "optim.lr=0.05",
              "--set", "eval.metrics=['e_recall@1', 'nmi']", "--set", "eval.at_start=false", "--set", "eval.raw_pixel_baseline=false"]
    probe = tmp_path / "probe.py"
    probe.write_text(DDP_PROBE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, str(probe), *common, "--run-dir", str(tmp_path / "one")], capture_output=True,
                            text=True, timeout=300, cwd=REPO, env={**env, "PROBE_OUT": str(tmp_path / "one")})
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(probe), *common,
         "--run-dir", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**env, "PROBE_OUT": str(tmp_path / "two")},
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    # The first step, where the maths says equal: the same global batch, the gathered embeddings and the loss equal
    # to the single process's, and the gradients after DDP's all-reduce (SUM) equal to the single process's. Only the
    # order of float32 additions differs (each rank sums over its half of the batch, then the all-reduce adds the two
    # halves): a relative difference of a few float32 epsilons (6e-8) times the log of the terms summed, measured
    # <= 4e-7 of each gradient's norm; 1e-5 leaves room for other kernels and is far below what averaging instead of
    # summing (0.5), a rank's half missing from the loss, or a different batch (order 1) gives.
    ref, ranks = torch.load(tmp_path / "one-rank0.pt"), [torch.load(tmp_path / f"two-rank{r}.pt") for r in (0, 1)]
    for rank in ranks:
        assert [torch.equal(a, b) for a, b in zip(ref["labels"], rank["labels"], strict=True)] == [True] * len(ref["labels"])
        assert torch.allclose(rank["embeddings"], ref["embeddings"], rtol=0, atol=1e-6)
        assert rank["loss"] == pytest.approx(ref["loss"], rel=1e-6)
        assert len(rank["grads"]) == len(ref["grads"])
        for mine, theirs in zip(rank["grads"], ref["grads"], strict=True):
            assert mine.shape == theirs.shape and float((mine - theirs).norm()) <= 1e-5 * float(theirs.norm())
    assert ranks[0]["loss"] == ranks[1]["loss"]  # each rank computes the global loss from the same gathered batch
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["grads"], ranks[1]["grads"], strict=True))  # replicas in step

    # Later steps: the batches stay the same (every step's global labels above), but the weights differ after the first
    # step by that rounding, and SGD amplifies a perturbation of the weights: on this config the embeddings' difference
    # doubles about every two steps (measured 1e-7 after step 1, 1e-5 at the end of epoch 1, up to 2e-3 at the end of
    # epoch 2), and where a pair crosses the multi-similarity loss's mining threshold a step's loss jumps (measured up to
    # 3e-3 of it in epoch 2). Epoch 1's mean loss measured 4e-8 apart: bound 1e-4; epoch 2's 2.6e-4: bound 1e-2.
    # Recall@1 moves by whole queries (1/896): one flips where its nearest same-class and other-class neighbours are
    # closer together than the drift; none within 1e-4 after epoch 1, 54 within 3e-3 after epoch 2.
    one, two = RunDir(tmp_path / "one").read_metrics(), RunDir(tmp_path / "two").read_metrics()
    assert [(r["kind"], r["epoch"], r["split"]) for r in one] == [(r["kind"], r["epoch"], r["split"]) for r in two]
    assert len(ref["labels"]) == sum(r["metrics"]["batches"] for r in one if r["kind"] == "train") == 28  # every step seen
    drift = {1: {"loss": 1e-4, "e_recall@1": 0.01}, 2: {"loss": 1e-2, "e_recall@1": 0.03}}
    for a, b in zip(one, two, strict=True):
        if a["kind"] == "train":
            assert b["metrics"]["loss"] == pytest.approx(a["metrics"]["loss"], rel=drift[a["epoch"]]["loss"])
            assert b["metrics"]["batches"] == a["metrics"]["batches"]
        else:
            assert b["metrics"]["e_recall@1"] == pytest.approx(a["metrics"]["e_recall@1"], abs=drift[a["epoch"]]["e_recall@1"])
    status = RunDir(tmp_path / "two").read_status()
    assert status["state"] == "finished" and status["world_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["greedy_coreset", "disthist_batchmatch"])
def test_storage_samplers_train_and_resume_exactly(tmp_path, monkeypatch, sampler):
    config = digits_config(f"sampler.name='{sampler}'", "sampler.batchmatch_bigbs=128", "sampler.batch_size=64",
                           "optim.epochs=2", "eval.at_start=false", "eval.raw_pixel_baseline=false")
    assert trainer.run(config, tmp_path / "straight", show_progress=False).state == "finished"
    assert "sampler memory: 901 embeddings" in (tmp_path / "straight" / "train.log").read_text()
    calls = {"n": 0}

    def stop_after(self) -> bool:
        calls["n"] += 1
        return calls["n"] >= 20  # 14 batches per epoch: inside epoch 2

    with monkeypatch.context() as patch:
        patch.setattr(trainer.StopRequested, "__bool__", stop_after)
        assert trainer.run(config, tmp_path / "resumed", show_progress=False).state == "stopped"
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=False)
    assert state["sampler"]["memory"].shape == (901, 64)
    assert trainer.run(config, tmp_path / "resumed", show_progress=False, resume=True).state == "finished"
    assert _comparable(tmp_path / "resumed") == _comparable(tmp_path / "straight")
