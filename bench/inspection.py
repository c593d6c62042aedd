"""Benchmark of ``dmltui inspect``'s computation against the evaluation suite, at Stanford Online Products scale.

The embeddings are engine.perf's synthetic SOP-like set (as bench/eval.py's) (60,502 × 128, 11,316 classes
of 2–12 samples, seeded). Both sides start from the embeddings in memory (``inspect``
reads them from its cache; the evaluation gets them from the trainer):

* ``suite``: what the trainer runs per evaluation, as bench/eval.py times it:
  e_recall@1,10,100,1000 + map_at_r + mAP_c (one exact kNN pass), the k-means, nmi, f1;
* ``inspect``: :func:`engine.metrics.per_query.query_results` with k = 10 (top-10
  neighbours and distances, first-hit rank, AP per query) plus what ``inspect --json``
  derives from it (per-class recall@1, the most confused pairs, the worst queries).

Each side runs in a fresh subprocess, in alternation (suite, inspect, suite, inspect, ...),
so that each peak RSS is its own and a load change on a shared machine hits both; imports
and a small warm-up call come before the clock starts. The figure is the ratio of their
fastest wall times (and of their CPU times): other load on a shared machine only adds time. Target (issue
#14): inspect ≤ 1.1 × the suite, with the suite's memory bound.

    uv run python bench/inspection.py            # one JSON object
    uv run python bench/inspection.py --n 15000 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 1.1


def run_one(side: str, n: int, threads: int) -> dict:
    """One side, timed from the embeddings in memory (imports and a warm-up call first, untimed)."""
    import numpy as np
    import torch

    from engine import metrics as M
    from engine import perf
    from engine.metrics.per_query import query_results

    torch.set_num_threads(threads)
    x_np, y = perf.sop_like(n)
    x = torch.from_numpy(x_np)
    warm_x, warm_y = perf.sop_like(2000, seed=1)
    M.compute_metrics(warm_x, warm_y, ["e_recall@1"]) if side == "suite" else query_results(warm_x, warm_y, k=10)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall, cpu = time.perf_counter(), time.process_time()
    if side == "suite":
        values, _ = M.compute_metrics(x, y, perf.SUITE_RETRIEVAL)
        clusters = M.cluster(x, len(set(y.tolist())), space="e", seed=0).cpu().numpy()
        values["nmi"], values["f1"] = M.nmi(y, clusters), M.pair_f1(y, clusters)
        figures = {"e_recall@1": values["e_recall@1"], "map_at_r": values["map_at_r"]}
    else:
        results = query_results(x, y, k=10)
        sizes, recall = results.per_class()
        results.confused_pairs(10)
        results.worst(10)
        figures = {"e_recall@1": results.recall_at_1, "map_at_r": results.map_at_r,
                   "classes": int(len(sizes)), "worst_class_recall_at_1": float(np.min(recall))}
    return {"side": side, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "base_rss_mb": base_rss,
            "figures": figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60_502, help="samples (default 60,502: SOP's test split)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side (default 3; the fastest counts)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one side in this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.n, args.threads)))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    runs: dict[str, list[dict]] = {"suite": [], "inspect": []}
    for _ in range(args.repeat):
        for side in runs:
            command = [sys.executable, __file__, "--one", side, "--n", str(args.n), "--threads", str(args.threads)]
            proc = subprocess.run(command, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    suite, inspect = runs["suite"], runs["inspect"]

    def fastest(rows: list[dict], key: str) -> float:  # other load only ever adds time
        return min(r[key] for r in rows)

    same = all(s["figures"]["e_recall@1"] == i["figures"]["e_recall@1"] and s["figures"]["map_at_r"] == i["figures"]["map_at_r"]
               for s, i in zip(suite, inspect, strict=True))
    result = {
        "n": args.n, "dim": 128, "threads": args.threads, "repeat": args.repeat,
        "suite_s": round(fastest(suite, "wall_s"), 3), "inspect_s": round(fastest(inspect, "wall_s"), 3),
        "ratio": round(fastest(inspect, "wall_s") / fastest(suite, "wall_s"), 3),
        "cpu_ratio": round(fastest(inspect, "cpu_s") / fastest(suite, "cpu_s"), 3), "target_ratio": TARGET_RATIO,
        "suite_peak_rss_mb": round(max(r["peak_rss_mb"] for r in suite), 1),
        "inspect_peak_rss_mb": round(max(r["peak_rss_mb"] for r in inspect), 1),
        "base_rss_mb": round(min(r["base_rss_mb"] for r in suite + inspect), 1),
        "same_recall_and_map_at_r": same, "figures": inspect[0]["figures"],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    raise SystemExit(main())
