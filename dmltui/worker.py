"""The detached launcher of one run: wait for GPU leases, then become the engine.

    python -m dmltui.worker --run-dir DIR --gpus auto|cpu|0,1 [--count N] [--resume]

It runs in its own session (started with ``start_new_session=True``), so it survives
the CLI or TUI that launched it and a dropped SSH connection (SIGHUP). While it waits,
the run is ``queued`` with this process's pid. Once the leases are held it ``exec``s
``python -m engine --run-dir DIR`` with ``CUDA_VISIBLE_DEVICES`` set (or torchrun with one
process per GPU when a run holds several): the same pid continues as the training process
(or its torchrun agent) and keeps the lease descriptors.
"""

from __future__ import annotations

import argparse
import os
import sys

from dmltui import gpus
from engine.rundir import RunDir, now_iso


def engine_argv(run_dir: str, resume: bool, processes: int = 1) -> list[str]:
    """``python -m engine``, or under torchrun with one process per GPU (through :mod:`dmltui.ddp_launch`, so that a
    stop leaves no traceback in the run's output)."""
    engine = ["-m", "engine", "--run-dir", run_dir, *(["--resume"] if resume else [])]
    if processes > 1:
        return [sys.executable, "-m", "dmltui.ddp_launch", "--standalone", f"--nproc-per-node={processes}", *engine]
    return [sys.executable, *engine]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dmltui.worker")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--gpus", default="auto", help="auto, cpu, or a comma-separated list of GPU indices")
    parser.add_argument("--count", type=int, default=1, help="GPUs per run with --gpus auto (more than 1: torchrun)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    run_dir = RunDir(args.run_dir)
    run_dir.update_status(pid=os.getpid())  # a launcher that dies before the engine starts reads as crashed
    env = dict(os.environ)
    processes = 1
    if args.gpus == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        candidates = gpus.leasable_indices() if args.gpus == "auto" else gpus.parse_gpu_list(args.gpus)
        count = args.count if args.gpus == "auto" else len(candidates)
        if count > len(candidates):  # the run manager checks this first; never fall back to the CPU
            error = f"--gpus {args.gpus}: {count} GPU(s) wanted, {gpus.visible_gpus_text()}"
            run_dir.update_status(state="failed", ended_at=now_iso(), error=error)
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2)
        run_dir.update_status(state="queued", pid=os.getpid(), waiting_for=f"{count} GPU(s) of {candidates}",
                              queued_at=now_iso())
        held = gpus.lease(candidates, count)
        for fd in held.values():
            os.set_inheritable(fd, True)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in sorted(held))
        run_dir.update_status(waiting_for=None, gpus=sorted(held))
        processes = len(held)
    os.execve(sys.executable, engine_argv(str(run_dir.path), args.resume, processes), env)


if __name__ == "__main__":
    main()
