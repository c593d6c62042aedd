"""SLURM at sweep scale: submitting 100 runs, and listing them while they are pending.

    uv run python bench/slurm.py [--runs 100] [--json]

Needs a SLURM cluster (`.ci/slurm-up` starts one on this machine). The runs are held (`sbatch --hold`), so they stay
PENDING and nothing trains; they are cancelled at the end.

- ``submit_s``: wall time of ``dmltui run tiny --seeds 0-99 --on slurm``: resolving and checking the configs, making
  100 run directories, one store write, and the submission.
- ``sbatch_calls``: how many job arrays the runs ended up in (one means one sbatch call).
- ``list_s``: ``dmltui runs list --json`` with the 100 pending runs (one squeue call serves them all).

Targets (issue 12): one sbatch call, submission <= 3 s, listing <= 0.5 s with a warm bytecode cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = """extends = ["quickstart", "digits"]
[data]
image_size = 8
[optim]
epochs = 1
[eval]
metrics = ["e_recall@1"]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    script = str(Path(sys.executable).with_name("dmltui"))
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        (home / "presets").mkdir()
        (home / "presets" / "tiny.toml").write_text(TINY)
        config = home / "config.toml"
        config.write_text('[slurm]\ncpus_per_task = 1\ntime = 10\nsbatch = ["--hold"]\n')
        env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        env.update(DMLTUI_HOME=scratch, DMLTUI_CONFIG=str(config), PYTHONPYCACHEPREFIX=str(home / "pycache"))
        subprocess.run([script, "presets", "list"], env=env, capture_output=True, check=True)  # warms the bytecode cache
        started = time.perf_counter()
        submitted = subprocess.run([script, "run", "tiny", "--seeds", f"0-{args.runs - 1}", "--on", "slurm", "--json"],
                                   env=env, capture_output=True, text=True)
        submit_s = time.perf_counter() - started
        if submitted.returncode != 0:
            raise SystemExit(submitted.stderr.strip())
        records = json.loads(submitted.stdout)
        try:
            arrays = {json.loads((Path(r["run_dir"]) / "status.json").read_text())["slurm_job_id"].split("_")[0]
                      for r in records}
            walls = []
            for _ in range(3):
                started = time.perf_counter()
                listed = subprocess.run([script, "runs", "list", "--json"], env=env, capture_output=True, text=True,
                                        check=True)
                walls.append(time.perf_counter() - started)
            pending = sum(r.get("slurm_state") == "PENDING" for r in json.loads(listed.stdout))
        finally:
            for array in arrays:
                subprocess.run(["scancel", array], capture_output=True)
    figures = {"runs": args.runs, "submit_s": round(submit_s, 2), "sbatch_calls": len(arrays),
               "list_s": round(min(walls), 3), "pending_listed": pending}
    print(json.dumps(figures) if args.json else "\n".join(f"{key:>15}: {value}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
