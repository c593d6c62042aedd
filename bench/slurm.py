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
import subprocess
import sys
import time
from pathlib import Path

from _common import dmltui, scratch_home

TINY = """extends = ["quickstart", "digits"]
[data]
image_size = 8
[optim]
epochs = 1
[eval]
metrics = ["e_recall@1"]
"""


def submitted_arrays(home: Path) -> set[str]:
    """The job arrays of the runs under *home* that reached SLURM, read from their run directories, so that a
    submission that failed half-way is found as well; never raises, as it runs while an error is on its way out."""
    arrays = set()
    for status in (home / "runs").glob("*/status.json"):
        try:
            job_id = json.loads(status.read_text()).get("slurm_job_id")
        except (OSError, ValueError):
            continue
        if isinstance(job_id, str):
            arrays.add(job_id.split("_")[0])
    return arrays


def cancel(arrays: set[str]) -> None:
    """scancel the held job arrays (else they stay queued for good); says which are left when scancel fails."""
    if not arrays:
        return
    done = subprocess.run(["scancel", *sorted(arrays)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"scancel failed, cancel job arrays {' '.join(sorted(arrays))} by hand: {done.stderr.strip()}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with scratch_home({"tiny": TINY}, config='[slurm]\ncpus_per_task = 1\ntime = 10\nsbatch = ["--hold"]\n') as (home, env):
        try:
            dmltui(["presets", "list"], env)  # warms the bytecode cache
            started = time.perf_counter()
            dmltui(["run", "tiny", "--seeds", f"0-{args.runs - 1}", "--on", "slurm", "--json"], env)
            submit_s = time.perf_counter() - started
            arrays = submitted_arrays(home)
            walls = []
            for _ in range(3):
                started = time.perf_counter()
                listed = dmltui(["runs", "list", "--json"], env)
                walls.append(time.perf_counter() - started)
            pending = sum(r.get("slurm_state") == "PENDING" for r in json.loads(listed.stdout))
        finally:
            cancel(submitted_arrays(home))  # read again: whatever failed above may have failed before *arrays* was set
    figures = {"runs": args.runs, "submit_s": round(submit_s, 2), "sbatch_calls": len(arrays),
               "list_s": round(min(walls), 3), "pending_listed": pending}
    print(json.dumps(figures) if args.json else "\n".join(f"{key:>15}: {value}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
