"""The training loop: one run of a resolved :class:`Config` into a run directory.

Order per epoch: sample class-balanced batches, embed, mine and compute the loss,
step the optimizers, log the epoch's training figures, evaluate the requested
splits, write checkpoints (the last epoch, and the best epoch of every storage
metric on the selection split), step the LR schedule.

Epochs are numbered from 1; epoch 0 is the untrained network (``eval.at_start``).
Model selection uses the validation split when ``data.use_tv_split`` or ``data.folds`` is set, else
the test split, which is the paper's protocol (best test epoch) — it is model
selection on test data, so use a validation split for honest selection.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from engine import distributed, losses, preflight, samplers
from engine.config.schema import Config
from engine.data import ImageDataset, default_cache_size, open_split_cache, splits_of
from engine.evaluation import embed_dataset, evaluate_embeddings, raw_pixels
from engine.io import atomic_torch_save
from engine.metrics import display_name
from engine.models import from_config, input_spec
from engine.optim import build_optimizer, build_scheduler, per_iteration
from engine.rundir import Heartbeat, RunDir, now_iso
from engine.step_losses import NonFiniteLoss, StepLosses

log = logging.getLogger("engine")


# Steps whose losses stay on the device before one read-back (engine.step_losses); also how often DDP ranks agree on a
# stop request. At a GPU's few steps a second, a stop waits seconds at most.
LOSS_SYNC_STEPS = 32


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class Outcome:
    state: str
    epoch: int
    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # deterministic: cuDNN's reproducible kernels; otherwise let it time the candidates once per input shape and keep
    # the fastest (training's shapes are fixed), which its default (benchmark off) never does
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


class DeviceError(RuntimeError):
    """The run asks for a CUDA device that this machine does not have."""


def resolve_device(config: Config) -> torch.device:
    """The CUDA device the run asks for, else the first GPU under run.device='auto', else the CPU.

    A run that asks for CUDA explicitly (see :func:`engine.preflight.cuda_requested`) never
    falls back to the CPU: a run meant for a GPU would otherwise crawl there unnoticed.
    """
    if config.run.device == "cpu":
        return torch.device("cpu")
    problems = preflight.device_problems(config.run)
    if problems:
        raise DeviceError("; ".join(problems))
    if not torch.cuda.is_available():  # run.device='auto' and no explicit request
        return torch.device("cpu")
    index = config.run.gpus[0] if config.run.gpus else 0
    if os.environ.get("CUDA_VISIBLE_DEVICES"):  # a launcher already picked the GPU
        index = 0
    return torch.device("cuda", index)


def setup_logging(run_dir: RunDir, console: bool) -> None:
    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False
    file_handler = logging.FileHandler(run_dir.log, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_handler)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(message)s"))
        # Tracebacks stay in train.log: the terminal gets the CLI's one error line instead.
        stream.addFilter(lambda record: record.exc_info is None)
        log.addHandler(stream)


# SIGUSR2 is what SLURM sends (through submitit's --signal) before a job's time limit or a preemption: the run
# checkpoints as when it is stopped and ends ``requeued``, and the job is requeued to resume it. Its default action
# would kill the engine.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR2") if hasattr(signal, name))


class StopRequested:
    """SIGTERM/SIGINT/SIGUSR2 set a flag; the loop checkpoints and ends in state ``stopped`` (``requeued`` for
    SIGUSR2, see :func:`final_state`)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequested:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal = signum
        log.warning("received %s: stopping after the current batch", signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __bool__(self) -> bool:
        return self.signal is not None


class SilentRunDir(RunDir):
    """The run directory as seen by ranks other than 0: they read, only rank 0 writes."""

    def update_status(self, **fields: Any) -> dict[str, Any]:
        return {}

    def append_metrics(self, record: dict[str, Any]) -> None:
        pass


class RankSlice:
    """This rank's share of a sampler's global batches: whole class groups, in rank order."""

    def __init__(self, sampler, context: distributed.Context, samples_per_class: int):
        per_rank, remainder = divmod(sampler.batch_size, context.world_size)
        if remainder or per_rank % samples_per_class:
            raise ValueError(
                f"sampler.batch_size={sampler.batch_size} must split into {context.world_size} ranks of whole "
                f"class groups of sampler.samples_per_class={samples_per_class}"
            )
        self.sampler, self.rank, self.per_rank = sampler, context.rank, per_rank

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch=start_batch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for batch in self.sampler:
            yield batch[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]


class Trainer:
    def __init__(self, config: Config, run_dir: RunDir, *, show_progress: bool | None = None,
                 context: distributed.Context | None = None):
        self.config = config
        self.run_dir = run_dir
        self.ctx = context or distributed.Context()
        interactive = sys.stderr.isatty()
        self.show_progress = self.ctx.is_main and config.log.progress and (interactive if show_progress is None else show_progress)
        self.epoch = 0
        self.step = 0
        self.best: dict[str, dict[str, Any]] = {}
        self.epoch_losses: list[float] = []  # losses of the running epoch's finished batches
        self.resume_batch = 0

    # ------------------------------------------------------------------ building
    def build(self) -> None:
        cfg = self.config
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        seed_everything(cfg.run.seed, cfg.run.deterministic)
        self.device = resolve_device(cfg)
        if self.ctx.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.ctx.local_rank)
            torch.cuda.set_device(self.device)
        spec = input_spec(cfg)
        size = spec.size
        # eval.test=false (a hyperparameter search) leaves the test split out here, so no evaluation can reach it.
        splits = splits_of(cfg.data, with_test=cfg.eval.test)
        train_tf = spec.transform(cfg.data.augmentation, train=True)
        eval_tf = spec.transform(cfg.data.augmentation, train=False)
        cache: dict = {}  # shared, so an image in two splits is decoded once
        image_cache = None
        if cfg.data.cache == "resized":
            cache_size = cfg.data.cache_size or default_cache_size(size)
            if cache_size < size:
                raise ValueError(f"data.cache_size={cache_size} is smaller than the network input size {size}")
            # Every rank calls this: one builds under the cache's file lock, the others wait and reuse it.
            image_cache = open_split_cache(splits, cache_size, cfg.data.cache_dir, workers=cfg.data.workers)
            log.info("image cache: %s (%d images, shorter side %d px%s)", image_cache.directory, len(image_cache),
                     cache_size, f", built in {image_cache.build_s:.1f} s" if image_cache.built else "")

        def make(images, transform) -> ImageDataset:
            return ImageDataset(images, transform, in_memory=cfg.data.in_memory, cache=cache, image_cache=image_cache)

        self.train_set = make(splits.train, train_tf)
        self.eval_sets: dict[str, ImageDataset] = {}
        for split in ("test", "val"):
            if getattr(splits, split) is not None:
                self.eval_sets[split] = make(getattr(splits, split), eval_tf)
        if cfg.eval.train_metrics:
            self.eval_sets["train"] = make(splits.train, eval_tf)
        self.selection_split = "val" if "val" in self.eval_sets else "test"
        self.num_classes = splits.train.num_classes

        self.sampler = samplers.from_config(cfg, splits.train.labels)
        # Storage samplers keep an embedding memory of the training set (eval transform).
        self.memory_set = make(splits.train, eval_tf) if self.sampler.needs_memory else None
        batch_sampler = RankSlice(self.sampler, self.ctx, cfg.sampler.samples_per_class) if self.ctx.enabled else self.sampler
        # The loader draws its workers' base seed from its own generator (re-seeded per epoch), not from the
        # global RNG: creating an iterator must not shift the miners' random stream, or a resume would.
        self.loader_generator = torch.Generator()
        self.loader = DataLoader(
            self.train_set,
            batch_sampler=batch_sampler,
            generator=self.loader_generator,
            num_workers=cfg.data.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.data.workers > 0,
        )
        self.model = from_config(cfg).to(self.device)
        self.criterion = losses.from_config(cfg, self.num_classes).to(self.device)
        self.optimizer = self._optimizer()
        self.scheduler = self._scheduler()
        if cfg.run.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # The wrapped/compiled modules share parameters with self.model, whose state dict the checkpoints keep.
        network: torch.nn.Module = self.model
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            network = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            network.register_comm_hook(None, distributed.sum_gradients_hook)
        self.forward_model = torch.compile(network) if cfg.run.compile else network
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.run.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.run.amp == "fp16")
        self.wandb = None
        if cfg.log.online and self.ctx.is_main:
            from engine.wandb_logger import WandbLogger

            self.wandb = WandbLogger(cfg, self.run_dir.path)
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        log.info(
            "dataset %s: %d train images / %d classes, %s%s",
            cfg.data.dataset,
            len(splits.train),
            splits.train.num_classes,
            f"{len(splits.test)} test images / {splits.test.num_classes} classes" if splits.test is not None
            else "test split left out (eval.test=false)",
            f", {len(splits.val)} val images / {splits.val.num_classes} classes" if splits.val is not None else "",
        )
        log.info(
            "model %s (%s trainable parameters) | loss %s | miner %s | sampler %s | device %s",
            cfg.model.arch, f"{n_params:,}", cfg.loss.name, cfg.miner.name, cfg.sampler.name, self.device,
        )

    def _scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        return build_scheduler(self.config.optim, self.optimizer, len(self.sampler))

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.config.optim, self.model, self.criterion)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, epoch: int) -> dict[str, dict[str, Any]]:
        if not self.ctx.is_main:
            return {}
        cfg = self.config.eval
        batch_size = cfg.batch_size or self.config.sampler.batch_size
        results = {}
        for split, dataset in self.eval_sets.items():
            with self.autocast():
                embeddings, labels = embed_dataset(self.model, dataset, batch_size=batch_size, device=self.device,
                                                   channels_last=self.config.run.channels_last)
            values, missing = evaluate_embeddings(embeddings, labels, cfg.metrics, seed=self.config.run.seed, on_gpu=cfg.on_gpu,
                                                  backend=cfg.backend, query=dataset.images.query,
                                                  gallery=dataset.images.gallery)
            record = {"kind": "eval", "epoch": epoch, "step": self.step, "split": split, "time": now_iso(), "metrics": values}
            if missing:
                record["missing"] = missing
            self.run_dir.append_metrics(record)
            if self.wandb:
                self.wandb.log(epoch, split, values)
            results[split] = values
        return results

    def log_raw_pixel_baseline(self) -> None:
        dataset = self.eval_sets["test"]
        pixels, labels = raw_pixels(dataset)
        values, missing = evaluate_embeddings(pixels, labels, self.config.eval.metrics, seed=self.config.run.seed,
                                             on_gpu=self.config.eval.on_gpu, backend=self.config.eval.backend,
                                             query=dataset.images.query, gallery=dataset.images.gallery)
        record = {"kind": "baseline", "name": "raw_pixels", "epoch": None, "step": 0, "split": "test", "time": now_iso(),
                  "metrics": values}
        if missing:
            record["missing"] = missing
        self.run_dir.append_metrics(record)
        log.info("raw pixels (test): %s", _fmt(values))

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: ``epoch`` is the last completed epoch; a
        checkpoint taken inside an epoch also records the batches already done in it."""
        return {
            "version": 1,
            "epoch": self.epoch - 1 if self.epoch_losses else self.epoch,
            "batch_in_epoch": len(self.epoch_losses),
            "epoch_losses": list(self.epoch_losses),
            "step": self.step,
            "model": self.model.state_dict(),
            "loss": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "best": self.best,
            "config": self.config.to_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.criterion.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("sampler"):
            self.sampler.load_state_dict(state["sampler"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        self.resume_batch = state.get("batch_in_epoch", 0)
        self.epoch_losses = list(state.get("epoch_losses", []))
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def save_checkpoints(self, results: dict[str, dict[str, Any]]) -> None:
        if not self.ctx.is_main:
            return
        state = None
        values = results.get(self.selection_split, {})
        for metric in self.config.eval.storage_metrics:
            value = values.get(metric)
            if not isinstance(value, (int, float)):
                continue
            key = f"{self.selection_split}/{metric}"
            if key not in self.best or value > self.best[key]["value"]:
                self.best[key] = {"value": float(value), "epoch": self.epoch}
                state = state or self.state()
                atomic_torch_save(self.run_dir.checkpoints / f"best_{self.selection_split}_{metric}.pt", state)
        atomic_torch_save(self.run_dir.checkpoints / "last.pt", state or self.state())

    # ------------------------------------------------------------------- training
    def train_epoch(self, stop: StopRequested, progress) -> dict[str, float] | None:
        """One epoch (or its rest, after a resume inside it); None when a stop cut it short."""
        self.model.train()
        if self.config.optim.freeze_backbone_epochs:  # Proxy-Anchor's warm-up: only the head and the loss train
            self.model.trunk.requires_grad_(self.epoch > self.config.optim.freeze_backbone_epochs)
        self.sampler.set_epoch(self.epoch, start_batch=self.resume_batch)
        self.loader_generator.manual_seed(self.config.run.seed * 1_000_003 + self.epoch)
        self.resume_batch = 0
        started = time.perf_counter()
        losses_seen = StepLosses(self.epoch_losses, LOSS_SYNC_STEPS)
        first_step = self.step - len(losses_seen) + 1  # the global step of the epoch's first batch
        total = len(self.sampler) + len(losses_seen)
        task = progress.add_task(f"epoch {self.epoch}/{self.config.optim.epochs}", total=total, completed=len(losses_seen)) if progress else None
        try:
            try:
                finished = self._train_batches(stop, progress, task, losses_seen)
            except Exception as error:
                if not isinstance(error, NonFiniteLoss):
                    # a NaN loss not read back yet explains what failed after it (a miner sampling from NaN
                    # distances): report the divergence, at its step
                    losses_seen.flush()
                raise
        except NonFiniteLoss as error:
            raise Diverged(f"loss became {error.value} at epoch {self.epoch}, step {first_step + error.step - 1}") from None
        finally:
            self.epoch_losses = losses_seen.values
        if not finished:
            return None
        if progress:
            progress.remove_task(task)
        self.epoch_losses = []
        losses = losses_seen.values
        figures = {
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - started,
            "batches": len(losses),
        }
        if hasattr(self.criterion, "beta") and self.criterion.beta is not None:
            figures["beta_mean"] = float(self.criterion.beta.detach().mean())
        return figures

    def _train_batches(self, stop: StopRequested, progress, task, losses_seen: StepLosses) -> bool:
        """The epoch's remaining batches; False when a stop request ended it early (its losses read back)."""
        for images, labels, indices in self.loader:
            images = images.to(self.device, non_blocking=True)
            if self.config.run.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(self.device, non_blocking=True)
            with self.autocast():
                embeddings = self.forward_model(images)
            if self.ctx.enabled:  # the loss sees the global batch; gradients flow through this rank's part
                embeddings = distributed.gather_with_grad(embeddings, self.ctx)
                labels = distributed.gather_with_grad(labels, self.ctx)
                indices = distributed.gather_with_grad(indices.to(self.device), self.ctx)
            loss = self.criterion(embeddings, labels)  # losses run in float32 (DMLLoss upcasts)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.config.optim.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(parameters, self.config.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if per_iteration(self.config.optim):
                self.scheduler.step()
            self.sampler.update_memory(indices, embeddings.detach())  # no-op for memoryless samplers
            self.step += 1
            read_back = losses_seen.add(loss)  # on the device: no host wait per step
            if progress:
                shown = f" loss {losses_seen.values[-1]:.4f}" if losses_seen.values else ""
                progress.update(task, advance=1, description=f"epoch {self.epoch}/{self.config.optim.epochs}{shown}")
            # under DDP asking every rank is a collective (and a host wait): every block's end, on every rank alike
            if (read_back or not self.ctx.enabled) and distributed.any_rank(bool(stop), self.ctx, self.device):
                losses_seen.flush()
                return False
        losses_seen.flush()
        return True

    def refresh_memory(self) -> None:
        """(Re)compute the storage sampler's memory: every training image, eval transform."""
        batch_size = self.config.eval.batch_size or self.config.sampler.batch_size
        with self.autocast():
            embeddings, _ = embed_dataset(self.model, self.memory_set, batch_size=batch_size, device=self.device,
                                          channels_last=self.config.run.channels_last)
        self.sampler.init_memory(embeddings)
        log.info("sampler memory: %d embeddings", len(embeddings))

    def fit(self, stop: StopRequested) -> Outcome:
        cfg = self.config
        if self.sampler.needs_memory and self.sampler.memory is None:
            self.refresh_memory()  # a resumed run restored its memory from the checkpoint
        self.run_dir.update_status(epoch=self.epoch, epochs=cfg.optim.epochs, step=self.step)
        if self.epoch == 0 and not self.epoch_losses and self.ctx.is_main:  # a fresh run, not a resumed one
            if cfg.eval.raw_pixel_baseline:
                self.log_raw_pixel_baseline()
            if cfg.eval.at_start or cfg.eval.only:
                results = self.evaluate(0)
                log.info("epoch 0 (untrained): %s", _fmt_results(results))
                if cfg.eval.only:  # the initial network is the result: keep it as the run's checkpoint
                    self.save_checkpoints(results)
                    return Outcome("finished", 0, self.best)
        progress_cm = _progress() if self.show_progress else nullcontext(None)
        with progress_cm as progress:
            for epoch in range(self.epoch + 1, cfg.optim.epochs + 1):
                if self.sampler.needs_memory and cfg.sampler.idx_full_prec and epoch > 1 and not self.epoch_losses:
                    self.refresh_memory()
                # under DDP the ranks agree on a stop once a block of steps (LOSS_SYNC_STEPS): an epoch shorter than
                # a block would never ask, so they also agree between epochs
                if self.ctx.enabled and not self.epoch_losses and distributed.any_rank(bool(stop), self.ctx, self.device):
                    if self.ctx.is_main:
                        atomic_torch_save(self.run_dir.checkpoints / "last.pt", self.state())
                    log.info("stopped after epoch %d; checkpoint written", self.epoch)
                    return Outcome("stopped", self.epoch, self.best)
                self.epoch = epoch
                figures = self.train_epoch(stop, progress)
                if figures is None:
                    if self.ctx.is_main:
                        atomic_torch_save(self.run_dir.checkpoints / "last.pt", self.state())
                    log.info("stopped in epoch %d after %d batches; checkpoint written", epoch, len(self.epoch_losses))
                    return Outcome("stopped", epoch - 1, self.best)
                self.run_dir.append_metrics(
                    {"kind": "train", "epoch": epoch, "step": self.step, "split": "train", "time": now_iso(), "metrics": figures}
                )
                if self.wandb:
                    self.wandb.log(epoch, "train", figures)
                last = epoch == cfg.optim.epochs
                results = self.evaluate(epoch) if last or epoch % cfg.eval.every == 0 else {}
                if not per_iteration(cfg.optim):
                    self.scheduler.step()  # before the checkpoints: a resume from the epoch's end continues exactly
                self.save_checkpoints(results)
                distributed.barrier(self.ctx)  # the other ranks wait for rank 0's evaluation
                self.run_dir.update_status(epoch=epoch, step=self.step, best=self.best)
                log.info(
                    "epoch %d/%d loss %.4f %.1fs | %s",
                    epoch, cfg.optim.epochs, figures["loss"], figures["epoch_time_s"], _fmt_results(results) or "no evaluation",
                )
        return Outcome("finished", self.epoch, self.best)


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    )


def _fmt(values: dict[str, Any]) -> str:
    return " ".join(f"{display_name(k)} {v:.3f}" for k, v in values.items() if isinstance(v, float))


def _fmt_results(results: dict[str, dict[str, Any]]) -> str:
    return " | ".join(f"{split} {_fmt(values)}" for split, values in results.items())


def one_line(error: BaseException) -> str:
    """``<type>: <first line of the message>``: what status.json and the terminal show of a failure."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def final_state(outcome: Outcome, signum: int | None, stop_request: dict[str, Any] | None) -> dict[str, Any]:
    """status.json's last fields for *outcome*. A stop is ``requeued`` (checkpointed, not ended: no ``ended_at``) when
    whoever stopped the run asked for a requeue in ``stop_request`` or, without a request, when the signal was SLURM's
    SIGUSR2; a stop for any other reason is ``stopped``, with the request's reason as its error."""
    request = stop_request if isinstance(stop_request, dict) else {}
    if outcome.state == "stopped":
        requeue = request.get("requeue", signum == getattr(signal, "SIGUSR2", None))
        if requeue:
            return {"state": "requeued", "ended_at": None, "requeued_at": now_iso(), "pid": None, "error": None}
        return {"state": "stopped", "ended_at": now_iso(), "error": request.get("reason") or outcome.error}
    return {"state": outcome.state, "ended_at": now_iso(), "error": outcome.error}


class ResumeError(RuntimeError):
    """A run directory that cannot be resumed (no readable checkpoint, or a finished run)."""


def run(config: Config, run_dir: str | os.PathLike, *, show_progress: bool | None = None, resume: bool = False) -> Outcome:
    """Train *config* into *run_dir*; always leaves a final state in status.json.

    With ``resume``, training continues from ``checkpoints/last.pt`` exactly where it
    stopped (model, optimizer, loss parameters, schedule, RNG states, sampler position);
    metrics.jsonl records of the epochs after the checkpoint are dropped first.
    """
    context = distributed.init()
    rd = RunDir(run_dir) if context.is_main else SilentRunDir(run_dir)
    checkpoint = None
    if resume:
        last = rd.checkpoints / "last.pt"
        if not last.is_file():
            raise ResumeError(f"{last} does not exist: nothing to resume (the run never finished an epoch)")
        try:
            checkpoint = torch.load(last, map_location="cpu", weights_only=False)
        except Exception as error:  # a truncated or foreign file
            raise ResumeError(f"{last} cannot be read ({one_line(error)}): nothing to resume from") from error
        if checkpoint["epoch"] >= config.optim.epochs and not checkpoint.get("batch_in_epoch"):
            raise ResumeError(f"{rd.path} already trained all {config.optim.epochs} epochs; nothing to resume")
        rd.keep_metrics_until(checkpoint["epoch"])
        for stray in rd.checkpoints.glob(".tmp-*"):  # a checkpoint write that a kill cut short: never read, now gone
            stray.unlink(missing_ok=True)
    if context.is_main:
        rd.path.mkdir(parents=True, exist_ok=True)
        rd.checkpoints.mkdir(exist_ok=True)
        if not rd.config.exists():
            import tomli_w

            rd.write_config(tomli_w.dumps(config.to_dict()))
        setup_logging(rd, console=True)
        rd.write_env()
    distributed.barrier(context)
    started = {"resumed_at": now_iso()} if resume else {"started_at": now_iso()}
    rd.update_status(state="running", pid=os.getpid(), pgid=os.getpgid(0), host=socket.gethostname(), ended_at=None,
                     error=None, world_size=context.world_size, stop_request=None, **started)
    trainer = Trainer(config, rd, show_progress=show_progress, context=context)
    with Heartbeat(rd) if context.is_main else nullcontext(), StopRequested() as stop:
        try:
            trainer.build()
            if checkpoint is not None:
                trainer.load_state(checkpoint)
                log.info("resumed after epoch %d (batch %d of the next)", trainer.epoch, trainer.resume_batch)
            outcome = trainer.fit(stop)
        except Diverged as error:
            log.error("diverged: %s", error)
            outcome = Outcome("diverged", trainer.epoch, trainer.best, str(error))
        except KeyboardInterrupt:
            outcome = Outcome("stopped", trainer.epoch, trainer.best, "interrupted")
        except Exception as error:
            log.exception("run failed: %s", rd.path)
            outcome = Outcome("failed", trainer.epoch, trainer.best, one_line(error))
    if getattr(trainer, "wandb", None):
        trainer.wandb.finish(outcome.state)
    rd.update_status(**final_state(outcome, stop.signal, rd.read_status().get("stop_request")), epoch=outcome.epoch,
                     best=outcome.best)
    if outcome.state != "failed":  # a failure was logged above, with its traceback
        log.info("run %s: %s", outcome.state, rd.path)
    distributed.shutdown(context)
    return outcome
