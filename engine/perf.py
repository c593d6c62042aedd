"""Measurements of this machine with the engine's own parts: the training step, the image pipeline and the evaluation
suite at SOP scale, each with the floor it is compared with (bench/train_step.py and bench/eval.py print them for us;
`dmltui doctor --bench` for a user's new box).

* The step: ``resnet50_frozen_normalize`` (no pretrained weights), 128-d head, margin loss with distance-weighted
  mining and Adam with the loss's beta group, as the trainer builds them from a config, on synthetic 224 px input:
  forward, loss, backward and optimizer step, in fp32 or bf16 autocast with channels_last; optionally compiled.
* The pipeline: a CUB-like JPEG tree through the real training transform and a shuffling DataLoader, from the files
  and from the pre-resized cache. Its floor is the step itself (the model's forward+backward on resident tensors): a
  pipeline slower than the bf16 step starves the GPU.
* The evaluation suite (recall@1..1000, map_at_r, mAP_c, nmi, f1) on synthetic SOP-like embeddings; its floor is the
  bare GEMM of its exact kNN (every query against the whole gallery, in the backend's chunks, nothing else).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine import losses, optim
from engine.config.schema import Config
from engine.data import ImageDataset, ImageList, build_transform, create_splits, ensure_image_cache
from engine.data.cache import default_cache_size
from engine.models import backbone_info, create_model

STEP_ARCH = "resnet50_frozen_normalize"
STEP_SIZE = 224
STEP_CLASSES = 100  # CUB200's training classes

SOP_N, SOP_CLASSES, SOP_DIM = 60_502, 11_316, 128
SOP_NOISE = 0.13
SUITE_RETRIEVAL = ["e_recall@1", "e_recall@10", "e_recall@100", "e_recall@1000", "map_at_r", "mAP_c"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_config(batch: int, deterministic: bool = True) -> Config:
    return Config.model_validate({
        "model": {"arch": STEP_ARCH, "embed_dim": 128, "pretrained": False},
        "loss": {"name": "margin"},
        "miner": {"name": "distance"},
        "sampler": {"batch_size": batch, "samples_per_class": 2},
        "optim": {"name": "adam"},
        "run": {"deterministic": deterministic},
    })


@dataclass(frozen=True)
class StepTiming:
    images_per_s: float
    first_step_s: float  # the first warm-up step alone: with torch.compile, the compile time


def time_train_step(config: Config, device: torch.device, *, bf16_channels_last: bool, steps: int, warmup: int,
                    compile: bool = False) -> StepTiming:
    """images/s of forward + loss + backward + optimizer step on synthetic input (synchronised on CUDA)."""
    torch.manual_seed(0)
    batch = config.sampler.batch_size
    model = create_model(STEP_ARCH, embed_dim=128, pretrained=False).to(device)
    criterion = losses.from_config(config, STEP_CLASSES).to(device)
    optimizer = optim.build_optimizer(config.optim, model, criterion)  # network group + the loss's beta group
    memory_format = torch.channels_last if bf16_channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    model.train()
    forward = torch.compile(model) if compile else model
    images = torch.randn(batch, 3, STEP_SIZE, STEP_SIZE, device=device).contiguous(memory_format=memory_format)
    per_class = config.sampler.samples_per_class
    labels = torch.randperm(STEP_CLASSES)[: batch // per_class].repeat_interleave(per_class).to(device)

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16_channels_last):
            embeddings = forward(images)
        loss = criterion(embeddings, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - started
    for _ in range(max(0, warmup - 1)):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return StepTiming(steps * batch / (time.perf_counter() - started), first)


def jpeg_tree(root: Path, n_images: int, n_classes: int = 200, seed: int = 0) -> Path:
    """A CUB-like tree ``root/cub200/images/NNN.Class_k/img_i.jpg`` of 500 x 375 JPEGs (smooth fields plus fine
    noise, about the size of CUB's files); returns *root*, a data root holding ``cub200``."""
    rng = np.random.default_rng(seed)
    images = root / "cub200" / "images"
    for i in range(n_images):
        folder = images / f"{i % n_classes + 1:03d}.Class_{i % n_classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (375, 500, 3), dtype=np.int16)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"img_{i // n_classes:04d}.jpg", quality=90)
    return root


def time_loader(dataset: ImageDataset, *, batch: int, workers: int, pin: bool) -> float:
    """images/s of a shuffling DataLoader over one pass, excluding the first batch (the workers' start-up)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                                         pin_memory=pin, generator=torch.Generator().manual_seed(0))
    seen, started = 0, None
    for images, _, _ in loader:
        if started is None:
            started = time.perf_counter()
            continue
        seen += images.shape[0]
    if not seen:
        raise ValueError(f"too few images for a pipeline measurement: need more than 2 batches of {batch}")
    return seen / (time.perf_counter() - started)


@dataclass(frozen=True)
class PipelineTiming:
    images: int
    files_img_s: float
    cached_img_s: float
    cache_built: bool
    cache_build_s: float
    cache_bytes: int


def time_pipeline(root: Path, dataset: str, cache_dir: Path, *, batch: int, workers: int, pin: bool) -> PipelineTiming:
    """The training transform over every image of *dataset* under *root*: from the JPEG files, then from the resized
    cache (built in *cache_dir* first, unless one is there)."""
    splits = create_splits(dataset, root)
    paths = splits.train.paths + splits.test.paths
    images = ImageList(paths, np.zeros(len(paths), dtype=np.int64), ["all"])
    backbone = backbone_info(STEP_ARCH)
    transform = build_transform("base", STEP_SIZE, train=True, mean=backbone.mean, std=backbone.std)
    files = time_loader(ImageDataset(images, transform), batch=batch, workers=workers, pin=pin)
    cache = ensure_image_cache(paths, Path(splits.info["root"]), default_cache_size(STEP_SIZE), cache_dir, workers=workers)
    cached = time_loader(ImageDataset(images, transform, image_cache=cache), batch=batch, workers=workers, pin=pin)
    return PipelineTiming(len(paths), files, cached, cache.built, cache.build_s if cache.built else 0.0, cache.nbytes)


def sop_class_sizes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Class sizes in 2..12 with SOP's mean (60,502 / 11,316 ≈ 5.35), summing to exactly n."""
    n_classes = max(1, round(SOP_CLASSES * n / SOP_N))
    values = np.arange(2, 13)
    weights = np.exp(-values / 2.6)
    sizes = rng.choice(values, size=n_classes, p=weights / weights.sum())
    while sizes.sum() != n:  # nudge random classes, staying within 2..12
        i = rng.integers(n_classes)
        if sizes.sum() < n and sizes[i] < 12:
            sizes[i] += 1
        elif sizes.sum() > n and sizes[i] > 2:
            sizes[i] -= 1
    return sizes


def sop_like(n: int = SOP_N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings n x 128 float32 L2-normalised, labels n int64), seeded: each class a random unit centre, its
    samples the centre plus Gaussian noise, normalised."""
    rng = np.random.default_rng(seed)
    sizes = sop_class_sizes(n, rng)
    labels = np.repeat(np.arange(sizes.size), sizes)
    centres = rng.standard_normal((sizes.size, SOP_DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels] + SOP_NOISE * rng.standard_normal((n, SOP_DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(n)
    return np.ascontiguousarray(x[perm], dtype=np.float32), labels[perm]


@dataclass(frozen=True)
class SuiteTiming:
    backend: str
    stages_s: dict[str, float]
    stages_cpu_s: dict[str, float]
    metrics: dict[str, float]
    missing: list[str]

    @property
    def total_s(self) -> float:
        return sum(self.stages_s.values())


def time_eval_suite(x: torch.Tensor, labels: np.ndarray, backend: str) -> SuiteTiming:
    """The suite on *x* (on its device) with *backend* ('auto', 'torch', 'faiss'), timed per stage: the one kNN pass
    behind every retrieval metric, the k-means that nmi and f1 share, and their scores."""
    from engine import metrics
    from engine.metrics.backends import resolve_backend

    engine = resolve_backend(backend, x.device)
    stages: dict[str, float] = {}
    stages_cpu: dict[str, float] = {}

    def timed(stage, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        sync(x.device)
        stages[stage], stages_cpu[stage] = time.perf_counter() - wall, time.process_time() - cpu
        return out

    values, missing = timed("retrieval", lambda: metrics.compute_metrics(x, labels, SUITE_RETRIEVAL, backend=backend))
    k = int(np.unique(labels).size)
    clusters = timed("kmeans", lambda: metrics.cluster(x, k, space="e", seed=0, backend=engine).cpu().numpy())
    values["nmi"] = timed("nmi", lambda: metrics.nmi(labels, clusters))
    values["f1"] = timed("f1", lambda: metrics.pair_f1(labels, clusters))
    return SuiteTiming(engine, stages, stages_cpu, dict(values), list(missing))


def time_knn_gemm(x: torch.Tensor) -> float:
    """Seconds of the bare GEMM of an exact kNN over *x* against itself: every query block times the whole gallery into
    one reused buffer, in the blocks the torch backend uses, and nothing else (no selection, no copy back)."""
    from engine.metrics.neighbours import auto_chunk_size

    chunk = auto_chunk_size(x.shape[0])
    gallery = x.t().contiguous()
    buffer = torch.empty(min(chunk, x.shape[0]), x.shape[0], dtype=x.dtype, device=x.device)
    sync(x.device)
    started = time.perf_counter()
    for start in range(0, x.shape[0], chunk):
        stop = min(x.shape[0], start + chunk)
        torch.matmul(x[start:stop], gallery, out=buffer[: stop - start])
    sync(x.device)
    return time.perf_counter() - started
