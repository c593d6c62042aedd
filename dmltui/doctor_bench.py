"""``dmltui doctor --bench``: a self-test of this machine through the real code paths, about two minutes on a GPU box.

Parts, each measured against a floor or a target of the same run where there is one:

* ``gpus``: every GPU's name and memory (NVML), the driver's and CUDA's versions, cuDNN's, whether NVML answers and
  whether dmltui's lease file of the GPU can be taken (a run holding it is said so).
* ``train_step``: ResNet-50 train steps as bench/train_step.py builds them (engine.perf), fp32 and bf16 +
  channels_last, the bf16 speedup (target above 1: bf16 slower than fp32 means the tensor cores are not used), and
  the bf16 step under ``torch.compile`` with its compile time.
* ``pipeline``: a generated CUB-like JPEG tree through the training transform with this machine's cores, from the
  files and from the resized cache; its floor is the fastest step measured (a slower pipeline starves it).
* ``eval``: the evaluation suite on synthetic SOP-like embeddings with the torch backend and, where faiss-gpu is
  installed, the faiss one; seconds and peak GPU memory; the retrieval stage against the bare GEMM of its kNN.
* ``ddp``: one step under torchrun (NCCL across up to 2 GPUs; gloo with 2 ranks on a CPU-only machine) equal to the
  same step in one process (engine.ddp_check).

On a CPU-only machine the GPU parts are skipped by name, with the reason, and the CPU parts run at a size that keeps
the whole test near a minute: batch 8, n = 15,000 for the suite.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.trainer import one_line

# targets that mark a figure short (the floors are measured in the same run)
BF16_MIN_SPEEDUP = 1.0  # bf16 + channels_last slower than fp32: no tensor-core path
RETRIEVAL_MAX_GEMM_RATIO = 4.0  # the kNN's selection and bookkeeping beyond its GEMM: at most three GEMMs more
DDP_MAX_REL_DIFF = 1e-4  # only the order of float32 additions differs (measured ~3e-6 on gloo); averaging gives 0.5


@dataclass(frozen=True)
class Sizes:
    """How much each part measures: a GPU box gets the issue's figures, a CPU the same paths, smaller."""

    batch: int
    warmup: int
    steps: int
    images: int
    workers: int
    eval_n: int


def sizes_for(cuda: bool) -> Sizes:
    cores = os.cpu_count() or 1
    if cuda:
        return Sizes(batch=112, warmup=10, steps=30, images=2000, workers=min(cores, 16), eval_n=60_502)
    return Sizes(batch=8, warmup=1, steps=1, images=300, workers=min(cores, 4), eval_n=15_000)


@dataclass
class Report:
    machine: dict = field(default_factory=dict)
    parts: dict[str, dict | list] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)  # {"part", "reason"}
    short: list[dict] = field(default_factory=list)  # {"part", "figure", "why"}
    failed: list[dict] = field(default_factory=list)  # {"part", "error"}
    seconds: float = 0.0

    def skip(self, part: str, reason: str) -> None:
        self.skipped.append({"part": part, "reason": reason})

    def fall_short(self, part: str, figure: str, why: str) -> None:
        self.short.append({"part": part, "figure": figure, "why": why})

    def as_dict(self) -> dict:
        return {"machine": self.machine, **self.parts, "skipped": self.skipped, "short": self.short,
                "failed": self.failed, "seconds": round(self.seconds, 1)}


def run_bench(say: Callable[[str], None] = lambda _: None) -> Report:
    """Every part, in order; a part that raises is recorded as failed (one line) and the others still run."""
    import torch

    started = time.perf_counter()
    report = Report()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    sizes = sizes_for(cuda)
    report.machine = machine_facts(torch, cuda)
    for name, part in (("gpus", lambda: gpu_part(report, torch)),
                       ("train_step", lambda: train_step_part(report, device, sizes, say)),
                       ("pipeline", lambda: pipeline_part(report, device, sizes, report.parts["train_step"], say)),
                       ("eval", lambda: eval_part(report, device, sizes, say)),
                       ("ddp", lambda: ddp_part(report, cuda, say))):
        say(f"bench: {name}")
        try:
            report.parts[name] = part()
        except Exception as error:  # a broken part is a finding: say which, run the others
            report.failed.append({"part": name, "error": one_line(error)})
            report.parts[name] = {}
    report.seconds = time.perf_counter() - started
    return report


def machine_facts(torch, cuda: bool) -> dict:
    return {
        "host": socket.gethostname(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": "cuda" if cuda else "cpu",
        "device_name": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)",
    }


def gpu_part(report: Report, torch) -> list[dict]:
    """NVML's view of every GPU, and whether its dmltui lease can be taken (and is given back at once)."""
    import pynvml

    from dmltui import gpus

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        report.skip("gpus", f"NVML does not answer ({error}): no NVIDIA driver or GPU on this machine")
        return []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda_driver = pynvml.nvmlSystemGetCudaDriverVersion()
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.append({"index": index, "name": _text(pynvml.nvmlDeviceGetName(handle)),
                          "memory_mb": memory.total // 2**20, "memory_used_mb": memory.used // 2**20,
                          "driver": driver, "cuda_driver": f"{cuda_driver // 1000}.{cuda_driver % 1000 // 10}",
                          "nvml": True})
    finally:
        pynvml.nvmlShutdown()
    for gpu in found:
        fd = gpus.try_lease(gpu["index"])
        gpu["lease"] = "usable" if fd is not None else "held by a run"
        if fd is None:
            report.fall_short("gpus", f"gpu{gpu['index']}.lease", "a run holds this GPU: its figures share the GPU")
        else:
            os.close(fd)
    if not torch.cuda.is_available():
        report.fall_short("gpus", "cuda", f"NVML sees {len(found)} GPU(s) but torch cannot use CUDA "
                          f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})")
    return found


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def train_step_part(report: Report, device, sizes: Sizes, say) -> dict:
    import torch

    from engine import perf, trainer

    trainer.seed_everything(0, deterministic=False)  # the fastest kernels (cudnn.benchmark), as a non-deterministic run
    config = perf.step_config(sizes.batch, deterministic=False)
    figures: dict = {"device": device.type, "batch": sizes.batch, "warmup": sizes.warmup, "steps": sizes.steps}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fp32 = perf.time_train_step(config, device, bf16_channels_last=False, steps=sizes.steps, warmup=sizes.warmup)
    figures["fp32_img_s"] = round(fp32.images_per_s, 2)
    say(f"bench: step fp32 {fp32.images_per_s:.1f} images/s")
    if device.type != "cuda":
        report.skip("train_step.bf16_channels_last", "no CUDA GPU: bf16 autocast with channels_last is the GPU path "
                    "(a CPU without bf16 units emulates bf16, many times slower than fp32)")
        report.skip("train_step.compile", "no CUDA GPU: torch.compile is measured on the GPU's bf16 step")
        return figures
    bf16 = perf.time_train_step(config, device, bf16_channels_last=True, steps=sizes.steps, warmup=sizes.warmup)
    figures.update(bf16_cl_img_s=round(bf16.images_per_s, 2), bf16_speedup=round(bf16.images_per_s / fp32.images_per_s, 3),
                   peak_gpu_mem_gb=round(torch.cuda.max_memory_allocated(device) / 2**30, 2))
    say(f"bench: step bf16 + channels_last {bf16.images_per_s:.1f} images/s")
    if figures["bf16_speedup"] < BF16_MIN_SPEEDUP:
        report.fall_short("train_step", "bf16_speedup", f"bf16 + channels_last is not faster than fp32 "
                          f"({figures['bf16_speedup']}x)")
    try:
        compiled = perf.time_train_step(config, device, bf16_channels_last=True, steps=sizes.steps,
                                        warmup=sizes.warmup, compile=True)
    except Exception as error:  # inductor needs a compiler toolchain and triton: say what failed
        report.fall_short("train_step", "compile", f"torch.compile failed: {one_line(error)}")
    else:
        figures.update(compiled_img_s=round(compiled.images_per_s, 2), compile_s=round(compiled.first_step_s, 1),
                       compile_speedup=round(compiled.images_per_s / bf16.images_per_s, 3))
    return figures


def pipeline_part(report: Report, device, sizes: Sizes, steps: dict, say) -> dict:
    from engine import perf

    with tempfile.TemporaryDirectory(prefix="dmltui-bench-") as scratch:
        root = perf.jpeg_tree(Path(scratch) / "data", sizes.images)
        timing = perf.time_pipeline(root, "cub200", Path(scratch) / "cache", batch=sizes.batch, workers=sizes.workers,
                                    pin=device.type == "cuda")
    floor_key = max((k for k in ("fp32_img_s", "bf16_cl_img_s", "compiled_img_s") if k in steps),
                    key=lambda k: steps[k], default=None)
    figures = {"workers": sizes.workers, "images": timing.images, "files_img_s": round(timing.files_img_s, 1),
               "cached_img_s": round(timing.cached_img_s, 1), "cache_build_s": round(timing.cache_build_s, 2),
               "floor": floor_key, "floor_img_s": steps.get(floor_key)}
    say(f"bench: pipeline {timing.files_img_s:.0f} images/s from files, {timing.cached_img_s:.0f} from the cache")
    if floor_key is None:
        report.skip("pipeline.keeps_up", "no train step was measured to compare with")
        return figures
    figures["files_keep_up"] = timing.files_img_s >= steps[floor_key]
    figures["cache_keeps_up"] = timing.cached_img_s >= steps[floor_key]
    if not figures["cache_keeps_up"]:
        report.fall_short("pipeline", "cached_img_s", f"{sizes.workers} workers decode fewer images/s than the "
                          f"{floor_key.removesuffix('_img_s')} step trains: the GPU waits for data")
    elif not figures["files_keep_up"]:
        report.fall_short("pipeline", "files_img_s", "from JPEG files the workers cannot feed the step; the resized "
                          "cache can (data.cache = true)")
    return figures


def eval_part(report: Report, device, sizes: Sizes, say) -> list[dict]:
    import torch

    from engine import metrics, perf
    from engine.metrics.backends import faiss_gpus, faiss_module

    x_np, labels = perf.sop_like(sizes.eval_n)
    x = torch.from_numpy(x_np).to(device)
    backends = ["torch"]
    if device.type == "cuda":
        if faiss_module() is not None and faiss_gpus() > 0:
            backends.append("faiss")
        else:
            report.skip("eval.faiss_gpu", "faiss-gpu is not installed (uv sync --extra gpu): the torch backend only")
    else:
        report.skip("eval.gpu", "no CUDA GPU: the suite ran on the CPU (n = 15,000 rather than SOP's 60,502)")
    metrics.compute_metrics(x[:2000], labels[:2000], ["e_recall@1", "nmi"], backend="torch")  # kernels warm
    gemm_s = perf.time_knn_gemm(x)
    results = []
    for backend in backends:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        suite = perf.time_eval_suite(x, labels, backend)
        row = {"backend": suite.backend, "device": device.type, "n": sizes.eval_n, "seconds": round(suite.total_s, 2),
               "stages_s": {stage: round(s, 3) for stage, s in suite.stages_s.items()},
               "gemm_floor_s": round(gemm_s, 3), "retrieval_gemm_ratio": round(suite.stages_s["retrieval"] / gemm_s, 2),
               "e_recall@1": round(suite.metrics["e_recall@1"], 4)}
        if device.type == "cuda":
            row["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        say(f"bench: eval ({suite.backend}) {suite.total_s:.1f} s")
        if backend == "torch" and row["retrieval_gemm_ratio"] > RETRIEVAL_MAX_GEMM_RATIO:
            report.fall_short("eval", "retrieval_gemm_ratio", f"the kNN takes {row['retrieval_gemm_ratio']}x its bare "
                              f"GEMM (at most {RETRIEVAL_MAX_GEMM_RATIO}x expected)")
        results.append(row)
    return results


def ddp_part(report: Report, cuda: bool, say) -> dict:
    """engine.ddp_check under torchrun: NCCL across up to 2 GPUs, else gloo with 2 ranks on the CPU."""
    import torch

    gpus = torch.cuda.device_count() if cuda else 0
    ranks = min(gpus, 2) if gpus else 2
    if not gpus:
        report.skip("ddp.nccl", "no CUDA GPU: the same check ran on gloo with 2 CPU ranks")
    elif gpus == 1:
        report.skip("ddp.two_gpus", "one GPU: NCCL ran with 1 rank (no gradient exchange between GPUs)")
    with tempfile.TemporaryDirectory(prefix="dmltui-ddp-") as scratch:
        out = Path(scratch) / "ddp.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                               "-m", "engine.ddp_check", str(out)], capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0 or not out.is_file():
            said = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise RuntimeError(f"torchrun exited {done.returncode}: {said[-1] if said else 'no message'}")
        figures = json.loads(out.read_text())
    worst = max(figures["loss_rel_diff"], figures["grads_max_rel_diff"])
    figures["equal"] = worst <= DDP_MAX_REL_DIFF
    say(f"bench: ddp ({figures['backend']}, {figures['ranks']} ranks) {'equal' if figures['equal'] else 'DIFFERENT'}")
    if not figures["equal"]:
        report.fall_short("ddp", "grads_max_rel_diff", f"the {figures['ranks']}-rank step differs from one process by "
                          f"{worst:.2g} (at most {DDP_MAX_REL_DIFF:g})")
    return figures


def table_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(part, figure, value, mark) for the human table; mark is ok, SHORT, skipped or FAILED."""
    short = {(s["part"], s["figure"]) for s in report["short"]}
    rows: list[tuple[str, str, str, str]] = []

    def add(part: str, figure: str, value, mark: str | None = None) -> None:
        if value is None:
            return
        rows.append((part, figure, str(value), mark or ("SHORT" if (part, figure) in short else "ok")))

    m = report["machine"]
    add("machine", "device", m["device_name"])
    add("machine", "torch / CUDA / cuDNN", f"{m['torch']} / {m['cuda_build'] or 'none'} / {m['cudnn'] or 'none'}")
    for gpu in report.get("gpus") or []:
        add("gpus", f"gpu{gpu['index']}", f"{gpu['name']}, {gpu['memory_mb']} MiB, driver {gpu['driver']} "
            f"(CUDA {gpu['cuda_driver']}), NVML ok, lease {gpu['lease']}",
            "SHORT" if ("gpus", f"gpu{gpu['index']}.lease") in short else "ok")
    step = report.get("train_step") or {}
    add("train_step", "fp32_img_s", step.get("fp32_img_s"))
    add("train_step", "bf16_cl_img_s", step.get("bf16_cl_img_s"))
    add("train_step", "bf16_speedup", step.get("bf16_speedup") and f"{step['bf16_speedup']}x")
    add("train_step", "compiled_img_s", step.get("compiled_img_s") and
        f"{step['compiled_img_s']} (compile {step['compile_s']} s)")
    pipe = report.get("pipeline") or {}
    floor = f" (step: {pipe['floor_img_s']})" if pipe.get("floor_img_s") else ""
    add("pipeline", "files_img_s", pipe.get("files_img_s") and f"{pipe['files_img_s']}{floor}")
    add("pipeline", "cached_img_s", pipe.get("cached_img_s") and f"{pipe['cached_img_s']}{floor}")
    for row in report.get("eval") or []:
        memory = f", peak {row['peak_gpu_mem_gb']} GB" if "peak_gpu_mem_gb" in row else ""
        add("eval", "seconds" if row["backend"] == "torch" else f"seconds ({row['backend']})",
            f"{row['seconds']} s at n = {row['n']:,} on {row['device']}{memory}")
        if row["backend"] == "torch":
            add("eval", "retrieval_gemm_ratio", f"{row['retrieval_gemm_ratio']}x the GEMM floor ({row['gemm_floor_s']} s)")
    ddp = report.get("ddp") or {}
    add("ddp", "grads_max_rel_diff", ddp.get("grads_max_rel_diff") is not None and
        f"{ddp['grads_max_rel_diff']:.2g} ({ddp['backend']}, {ddp['ranks']} ranks)")
    rows += [(s["part"], s["figure"], s["why"], "SHORT") for s in report["short"]]
    rows += [(s["part"], "", s["reason"], "skipped") for s in report["skipped"]]
    rows += [(f["part"], "", f["error"], "FAILED") for f in report["failed"]]
    return rows
