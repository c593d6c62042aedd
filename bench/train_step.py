"""Throughput of a resnet50 training step (fp32 vs bf16 + channels_last) and of the image pipeline (with and without the cache).

Step: the engine's own parts, as the trainer builds them from a config (``resnet50_frozen_normalize``,
no pretrained weights, 128-d embedding head, margin loss with distance-weighted mining, Adam with
the loss's beta group) on synthetic 224 px input: forward, loss, backward and optimizer step. Two
precisions: fp32 (PyTorch's defaults, so cuDNN may use TF32 on Ampere and later) and bf16 autocast
with channels_last network and input. images/s over ``--steps`` timed steps after ``--warmup``
(CUDA: synchronised).

Pipeline: a CUB-like JPEG folder (``--images`` random 500 x 375 JPEGs, 200 class folders, in a temp
dir; or ``--data ROOT`` with ``ROOT/<--dataset>/...``) through the real training transform
(RandomResizedCrop 224 + flip + normalise) and a shuffling DataLoader with ``--workers``, once from
the JPEG files and once from the pre-resized cache (shorter side 256; its build time is reported on
its own). images/s over every batch after the first (the first pays the workers' start-up).
``pipeline_keeps_up``: the pipeline delivers at least the bf16 step's images/s.

    uv run python bench/train_step.py                 # CPU: batch 16, 1 warm-up + 2 timed steps, 600 images, 2 workers
    uv run python bench/train_step.py --json          # one JSON object
    uv run python bench/train_step.py --device cuda   # GPU: batch 112, 10 warm-up + 30 timed steps, 2,000 images, 8 workers

(On a 2-core CPU one resnet50 step of 112 images takes over a minute, hence the CPU's batch 16;
``--batch 112`` measures the issue's figure there too.)

``--json`` keys: device, device_name, torch, threads, batch, steps, warmup, deterministic, tf32,
step_fp32_img_s, step_bf16_cl_img_s, bf16_speedup, workers, images, pipeline_img_s,
pipeline_cached_img_s, cache_speedup, cache_build_s, cache_gb, pipeline_keeps_up,
pipeline_cached_keeps_up (plus peak_gpu_mem_gb on CUDA). Skipped parts are null.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import perf, trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available")
    parser.add_argument("--batch", type=int, help="batch size (default: 112 on CUDA, 16 on CPU, where 112 takes minutes a step)")
    parser.add_argument("--steps", type=int, help="timed steps (default: 30 on CUDA, 2 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 10 on CUDA, 1 on CPU)")
    parser.add_argument("--workers", type=int, help="DataLoader workers of the pipeline (default: 8 on CUDA, 2 on CPU)")
    parser.add_argument("--images", type=int, help="generated JPEGs (default: 2000 on CUDA, 600 on CPU)")
    parser.add_argument("--data", type=Path, help="dataset root holding <--dataset>/ instead of generated JPEGs")
    parser.add_argument("--dataset", default="cub200", help="dataset under --data (default cub200)")
    parser.add_argument("--cache-dir", type=Path, help="where the cache is built (default: a temp dir, removed after)")
    parser.add_argument("--deterministic", choices=["on", "off"], default="on",
                        help="cuDNN deterministic kernels, as run.deterministic (default on, the trainer's default)")
    parser.add_argument("--skip-step", action="store_true", help="only measure the pipeline")
    parser.add_argument("--skip-pipeline", action="store_true", help="only measure the training step")
    args = parser.parse_args()

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    device = torch.device("cuda" if cuda else "cpu")
    batch = args.batch or (112 if cuda else 16)
    steps = args.steps or (30 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    workers = args.workers if args.workers is not None else (8 if cuda else 2)
    n_images = args.images or (2000 if cuda else 600)
    deterministic = args.deterministic == "on"
    trainer.seed_everything(0, deterministic)  # off: cudnn.benchmark, as the trainer sets it

    figures: dict = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else f"CPU ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "deterministic": deterministic,
        "tf32": bool(cuda and torch.backends.cudnn.allow_tf32),
        "step_fp32_img_s": None,
        "step_bf16_cl_img_s": None,
        "bf16_speedup": None,
        "workers": workers,
        "images": None,
        "pipeline_img_s": None,
        "pipeline_cached_img_s": None,
        "cache_speedup": None,
        "cache_build_s": None,
        "cache_gb": None,
        "pipeline_keeps_up": None,
        "pipeline_cached_keeps_up": None,
    }

    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    say(f"device: {figures['device_name']} | torch {torch.__version__} | {figures['threads']} threads | batch {batch}")
    if not args.skip_step:
        config = perf.step_config(batch, deterministic)
        fp32 = perf.time_train_step(config, device, bf16_channels_last=False, steps=steps, warmup=warmup).images_per_s
        say(f"step fp32:                 {fp32:8.1f} images/s")
        bf16 = perf.time_train_step(config, device, bf16_channels_last=True, steps=steps, warmup=warmup).images_per_s
        say(f"step bf16 + channels_last: {bf16:8.1f} images/s  ({bf16 / fp32:.2f}x fp32)")
        figures.update(step_fp32_img_s=round(fp32, 2), step_bf16_cl_img_s=round(bf16, 2), bf16_speedup=round(bf16 / fp32, 3))
        if cuda:
            figures["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)

    if not args.skip_pipeline:
        with tempfile.TemporaryDirectory(prefix="dmltui-bench-") as scratch:
            if args.data:
                root = args.data
            else:
                started = time.perf_counter()
                root = perf.jpeg_tree(Path(scratch) / "data", n_images)
                say(f"generated {n_images} JPEGs (500 x 375) in {time.perf_counter() - started:.1f} s")
            timing = perf.time_pipeline(root, args.dataset, args.cache_dir or Path(scratch) / "cache", batch=batch,
                                        workers=workers, pin=cuda)
            plain, cached = timing.files_img_s, timing.cached_img_s
            say(f"pipeline, JPEG files:      {plain:8.1f} images/s  ({workers} workers, {timing.images} images)")
            say(f"cache build:               {timing.cache_build_s:8.1f} s ({timing.cache_bytes / 1e9:.2f} GB)"
                if timing.cache_built else "cache: reused an existing one")
            say(f"pipeline, cache:           {cached:8.1f} images/s  ({cached / plain:.2f}x)")
            figures.update(images=timing.images, pipeline_img_s=round(plain, 2), pipeline_cached_img_s=round(cached, 2),
                           cache_speedup=round(cached / plain, 3),
                           cache_build_s=round(timing.cache_build_s, 2) if timing.cache_built else None,
                           cache_gb=round(timing.cache_bytes / 1e9, 3))
        if figures["step_bf16_cl_img_s"] is not None:
            figures["pipeline_keeps_up"] = figures["pipeline_img_s"] >= figures["step_bf16_cl_img_s"]
            figures["pipeline_cached_keeps_up"] = figures["pipeline_cached_img_s"] >= figures["step_bf16_cl_img_s"]
            say(f"pipeline keeps up with the bf16 step: files {'yes' if figures['pipeline_keeps_up'] else 'NO'}, "
                f"cache {'yes' if figures['pipeline_cached_keeps_up'] else 'NO'}")

    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
