"""Time the quickstart end to end (dataset generation, training, evaluation) in a scratch home.

    uv run python bench/quickstart.py [--json] [--keep-data]

Prints the wall time of `dmltui quickstart`, the mean epoch time, peak RSS of the
training process and the trained model's Recall@1 against the issue's targets
(< 180 s on 2 CPU cores, Recall@1 >= 0.50 on the held-out glyph classes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep-data", action="store_true", help="reuse $DMLTUI_DATA (skip dataset generation)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "DMLTUI_HOME": str(Path(scratch) / "home")}
        if not args.keep_data:
            env["DMLTUI_DATA"] = str(Path(scratch) / "data")
        script = Path(sys.executable).with_name("dmltui")
        started = time.perf_counter()
        result = subprocess.run([str(script), "quickstart", "--json"], capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"quickstart failed ({result.returncode}):\n{result.stderr[-2000:]}")
        payload = json.loads(result.stdout)
        records = [json.loads(line) for line in (Path(payload["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    epoch_times = [r["metrics"]["epoch_time_s"] for r in records if r["kind"] == "train"]
    trained = next(r for r in payload["rows"] if r["label"].startswith("trained (best"))
    figures = {
        "wall_s": round(wall, 1),
        "epochs": len(epoch_times),
        "mean_epoch_s": round(sum(epoch_times) / len(epoch_times), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "recall_at_1": round(trained["metrics"]["e_recall@1"], 4),
        "raw_pixels_recall_at_1": round(payload["rows"][0]["metrics"]["e_recall@1"], 4),
        "cpu_threads": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:>24}: {value}")
    print(f"{'targets':>24}: wall < 180 s -> {'ok' if wall < 180 else 'MISSED'}; "
          f"R@1 >= 0.50 -> {'ok' if figures['recall_at_1'] >= 0.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
