"""Run store speed with many runs: `dmltui runs list --json` wall time and one summary update.

    uv run python bench/store.py [--runs 2000] [--json]

Targets (issue 6): list <= 0.5 s wall with 2,000 stored runs, one summary update <= 50 ms.
The runs are synthetic store documents (a full resolved config each, a few keys varied per run),
written as a schema-1 file in a scratch $DMLTUI_HOME; the first update converts it to the current
schema (``migrate_ms``), ``update_ms`` is the median of the next 10 updates.

``list_json_s`` runs the command as this environment does; where it sets PYTHONDONTWRITEBYTECODE
(this sandbox does), every module is compiled from source on every start. ``list_json_pyc_s`` is the
same with a warm bytecode cache (a private PYTHONPYCACHEPREFIX, one warm-up run): what an installed
dmltui costs after its first start. Walls are the min of 3 runs (median in ``*_median_s``).
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
    defaults = Config().to_dict()

    def config(i: int) -> dict:
        varied = json.loads(json.dumps(defaults))
        varied["run"]["seed"] = i % 5
        varied["optim"]["lr"] = [1e-5, 3e-5, 1e-4][i % 3]
        varied["loss"]["name"] = ["margin", "triplet", "multisimilarity"][i % 3]
        varied["sampler"]["batch_size"] = [56, 112, 224][i % 3]
        return varied

    with tempfile.TemporaryDirectory() as home:
        path = Path(home) / "runs.json"
        documents = {
            str(i + 1): {"id": f"20261129-000000-{i:04x}", "name": f"run-{i}", "state": "finished", "config": config(i),
                         "dataset": "cub200", "loss": "margin", "miner": "distance", "seed": i % 5, "preset": "margin-b12-d",
                         "presets": ["presets/base.toml", "presets/margin-b12-d.toml"], "created_at": "2026-11-29T00:00:00",
                         "best": {"test/e_recall@1": {"value": 0.6, "epoch": 40}}, "tags": [], "notes": "",
                         "run_dir": f"/nonexistent/{i}", "epoch": 150, "epochs": 150}
            for i in range(args.runs)
        }
        path.write_text(json.dumps({"meta": {"1": {"schema_version": 1}}, "runs": documents}))
        size_v1_mb = path.stat().st_size / 2**20
        store = RunStore(path)
        updates = []
        for i in range(11):
            started = time.perf_counter()
            store.modify(f"20261129-000000-{i:04x}", lambda record, i=i: record.update(notes=f"note {i}"))
            updates.append((time.perf_counter() - started) * 1000)
        size_mb = path.stat().st_size / 2**20
        script = Path(sys.executable).with_name("dmltui")
        env = {**os.environ, "DMLTUI_HOME": home}
        warm_env = {key: value for key, value in env.items() if key != "PYTHONDONTWRITEBYTECODE"}
        warm_env["PYTHONPYCACHEPREFIX"] = str(Path(home) / "pycache")

        def list_walls(run_env: dict, warm_up: bool = False) -> list[float]:
            walls = []
            for _ in range(4 if warm_up else 3):
                started = time.perf_counter()
                result = subprocess.run([str(script), "runs", "list", "--json"], capture_output=True, env=run_env, check=True)
                walls.append(time.perf_counter() - started)
                assert len(json.loads(result.stdout)) == args.runs
            return walls[1:] if warm_up else walls

        walls = list_walls(env)
        warm_walls = list_walls(warm_env, warm_up=True)
    figures = {"runs": args.runs, "store_mb": round(size_mb, 2), "store_v1_mb": round(size_v1_mb, 2),
               "list_json_s": round(min(walls), 3), "list_json_median_s": round(statistics.median(walls), 3),
               "list_json_pyc_s": round(min(warm_walls), 3), "list_json_pyc_median_s": round(statistics.median(warm_walls), 3),
               "migrate_ms": round(updates[0], 1), "update_ms": round(statistics.median(updates[1:]), 1)}
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:>22}: {value}")
    print(f"{'targets':>22}: list <= 0.5 s -> {'ok' if figures['list_json_s'] <= 0.5 else 'MISSED'} "
          f"({'ok' if figures['list_json_pyc_s'] <= 0.5 else 'MISSED'} with bytecode); "
          f"update <= 50 ms -> {'ok' if figures['update_ms'] <= 50 else 'MISSED'}")


if __name__ == "__main__":
    main()
