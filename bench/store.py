"""Run store speed with many runs: `dmltui runs list --json` wall time and one summary update.

    uv run python bench/store.py [--runs 2000] [--json]

Targets (issue 6): list <= 0.5 s wall with 2,000 stored runs, one summary update <= 50 ms.
The runs are synthetic store documents (a full resolved config each), in a scratch $DMLTUI_HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dmltui.store import RunStore
from engine.config.schema import Config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = Config().to_dict()
    with tempfile.TemporaryDirectory() as home:
        path = Path(home) / "runs.json"
        documents = {
            str(i + 1): {"id": f"20261129-000000-{i:04x}", "name": f"run-{i}", "state": "finished", "config": config,
                         "dataset": "cub200", "loss": "margin", "miner": "distance", "seed": i % 5, "preset": "margin-b12-d",
                         "presets": ["presets/base.toml", "presets/margin-b12-d.toml"], "created_at": "2026-11-29T00:00:00",
                         "best": {"test/e_recall@1": {"value": 0.6, "epoch": 40}}, "tags": [], "notes": "",
                         "run_dir": f"/nonexistent/{i}", "epoch": 150, "epochs": 150}
            for i in range(args.runs)
        }
        path.write_text(json.dumps({"meta": {"1": {"schema_version": 1}}, "runs": documents}))
        size_mb = path.stat().st_size / 2**20
        store = RunStore(path)
        updates = []
        for i in range(10):
            started = time.perf_counter()
            store.update(f"20261129-000000-{i:04x}", {"notes": f"note {i}"})
            updates.append((time.perf_counter() - started) * 1000)
        script = Path(sys.executable).with_name("dmltui")
        env = {**os.environ, "DMLTUI_HOME": home}
        walls = []
        for _ in range(3):
            started = time.perf_counter()
            result = subprocess.run([str(script), "runs", "list", "--json"], capture_output=True, env=env, check=True)
            walls.append(time.perf_counter() - started)
        assert len(json.loads(result.stdout)) == args.runs
    figures = {"runs": args.runs, "store_mb": round(size_mb, 2), "list_json_s": round(min(walls), 3),
               "update_ms": round(statistics.median(updates), 1)}
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:>12}: {value}")
    print(f"{'targets':>12}: list <= 0.5 s -> {'ok' if figures['list_json_s'] <= 0.5 else 'MISSED'}; "
          f"update <= 50 ms -> {'ok' if figures['update_ms'] <= 50 else 'MISSED'}")


if __name__ == "__main__":
    main()
