"""Benchmark of the evaluation metrics at Stanford Online Products scale.

Synthetic SOP-like embeddings (seeded): N × 128 float32, L2-normalised, classes of
2–12 samples (60,502 samples in 11,316 classes at full size; the smaller sizes keep
the class-size distribution and scale the number of classes). Each class has a
random unit centre; its samples are the centre plus Gaussian noise, normalised.

The suite: e_recall@1,10,100,1000 + nmi + f1 + map_at_r + mAP_c, timed per stage:

* ``retrieval``: the one exact kNN pass that serves every recall, map_at_r and mAP_c
  (a top-12 selection; recall@100/1000 from the rank of the first same-class sample);
* ``kmeans``: the k-means (k = number of classes, 20 iterations at most) that nmi and
  f1 share: k-means++ seeding, then Lloyd;
* ``nmi`` and ``f1``: the scores of that clustering.

Wall and CPU (process) time are reported per stage: on a shared machine the CPU
seconds are the load-independent figure (an idle 2-thread run takes about half).
Target (issue #4): the suite at 60,502 in ≤ 16 s wall with 2 CPU threads.

Every configuration (device, N, backend) runs in a fresh subprocess, so the peak
memory (peak RSS of that process; GPU: also the peak CUDA memory) is its own.

    uv run python bench/eval.py                 # CPU (2 threads), N = 15,000, 30,000, 60,502
    uv run python bench/eval.py --json          # one JSON object per line, one line per configuration
    uv run python bench/eval.py --peer          # also pytorch-metric-learning at every N (60,502: ~7 GB)
    uv run python bench/eval.py --n 60502 --backend torch --device cpu

``--json`` prints one line per (device, n, backend):
``{"device", "n", "backend", "threads", "total_s", "cpu_s", "stages_s": {...}, "peak_rss_mb", "metrics": {...}}``
(cpu_s: the process's CPU time over the suite, a load-independent figure on a shared machine)
(plus ``"peer"`` with pytorch-metric-learning's time, peak RSS and values when it ran).
Without --peer the peer (AccuracyCalculator: precision_at_1, r_precision,
mean_average_precision_at_r) runs at 15,000 only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

FULL_N = 60_502  # engine.perf.SOP_N: the data and the suite are engine.perf's
SIZES = (15_000, 30_000, FULL_N)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(device: str, n: int, backend: str, threads: int, peer: bool) -> dict:
    """One configuration, in this process."""
    import torch

    torch.set_num_threads(threads)
    import faiss

    faiss.omp_set_num_threads(threads)
    from engine import metrics, perf

    x_np, y = perf.sop_like(n)
    base_rss = peak_rss_mb()
    x = torch.from_numpy(x_np).to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        metrics.compute_metrics(x[:2000], y[:2000], ["e_recall@1", "nmi"], backend=backend)  # warm up kernels
        torch.cuda.synchronize()
    c0 = time.process_time()
    suite = perf.time_eval_suite(x, y, backend)
    cpu = time.process_time() - c0
    engine, total, stages, stages_cpu, values, missing = (suite.backend, suite.total_s, suite.stages_s, suite.stages_cpu_s,
                                                          suite.metrics, suite.missing)
    out = {
        "device": device, "n": n, "backend": engine, "threads": threads, "total_s": round(total, 3),
        "cpu_s": round(cpu, 3), "stages_s": {s: round(v, 3) for s, v in stages.items()},
        "stages_cpu_s": {s: round(v, 3) for s, v in stages_cpu.items()}, "peak_rss_mb": round(peak_rss_mb(), 1),
        "base_rss_mb": round(base_rss, 1), "metrics": {m: round(v, 6) for m, v in values.items()},
    }
    if missing:
        out["missing"] = missing
    if device == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if peer:
        out["peer"] = run_peer(x_np, y, device)
        out["peak_rss_mb_with_peer"] = round(peak_rss_mb(), 1)
    return out


def run_peer(x_np, y, device: str) -> dict:
    """pytorch-metric-learning's AccuracyCalculator: precision_at_1, r_precision, MAP@R (its faiss kNN)."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                              k="max_bin_count", device=torch.device(device))
    t = time.perf_counter()
    got = calc.get_accuracy(torch.from_numpy(x_np), torch.from_numpy(y))
    return {"total_s": round(time.perf_counter() - t, 3), "metrics": {m: round(float(v), 6) for m, v in got.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per configuration, one per line")
    ap.add_argument("--n", type=int, action="append", help="sample counts (default 15000, 30000, 60502)")
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all", help="default: CPU, and CUDA when available")
    ap.add_argument("--backend", action="append", choices=["auto", "torch", "faiss"], help="default: auto")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of torch and faiss (default 2)")
    ap.add_argument("--peer", action="store_true", help="also time pytorch-metric-learning at every N")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    args = ap.parse_args(argv)

    if args.one:
        device, n, backend, peer = args.one.split(",")
        print(json.dumps(run_one(device, int(n), backend, args.threads, peer == "1")))
        return 0

    import torch

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if not devices:
        print("no CUDA device available", file=sys.stderr)
        return 1
    sizes = args.n or list(SIZES)
    backends = args.backend or ["auto"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for device in devices:
        for n in sizes:
            for backend in backends:
                peer = args.peer or n == 15_000
                cmd = [sys.executable, __file__, "--one", f"{device},{n},{backend},{int(peer)}", "--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    print(proc.stderr, file=sys.stderr)
                    return proc.returncode
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                if args.json:
                    print(json.dumps(result), flush=True)
                else:
                    print(format_result(result), flush=True)
    return 0


def format_result(r: dict) -> str:
    stages = "  ".join(f"{s} {v:.2f}s (CPU {r['stages_cpu_s'][s]:.1f}s)" for s, v in r["stages_s"].items())
    metrics = "  ".join(f"{m} {v:.4f}" for m, v in r["metrics"].items())
    line = (f"{r['device']:4s} n={r['n']:>6,d} {r['backend']:5s} threads={r['threads']}  total {r['total_s']:.2f}s  "
            f"[{stages}]  CPU time {r['cpu_s']:.1f}s  peak RSS {r['peak_rss_mb']:.0f} MB (before: {r['base_rss_mb']:.0f} MB)")
    if "peak_cuda_mb" in r:
        line += f"  peak CUDA {r['peak_cuda_mb']:.0f} MB"
    line += f"\n    {metrics}"
    if "peer" in r:
        p = r["peer"]
        line += (f"\n    peer (pytorch-metric-learning P@1+RP+MAP@R): {p['total_s']:.2f}s, "
                 f"peak RSS {r['peak_rss_mb_with_peer']:.0f} MB; " + "  ".join(f"{m} {v:.4f}" for m, v in p["metrics"].items()))
    return line


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
