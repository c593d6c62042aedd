"""What submitit runs on a compute node for one run (imported there, and on the login node only to submit).

submitit pickles the callable by reference, so it lives in an importable module: a ``Checkpointable`` that
runs ``python -m engine --run-dir DIR`` as a child process (its output goes to the run dir, not to memory,
unlike ``helpers.CommandFunction``) and can be requeued. A run of several processes (DDP) runs the same
command under torchrun in its one task, exactly as the local launcher does (``dmltui.worker.engine_argv``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from submitit.helpers import Checkpointable, DelayedSubmission

from dmltui.worker import engine_argv
from engine.rundir import RunDir, now_iso

CHECKPOINT_SECONDS = 60.0  # at most, between SLURM's signal and the requeue (signal_delay must leave this much)


def _running(pid: int) -> bool:
    """Whether *pid* runs (a zombie, dead but not reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _ignore_warning_signal() -> None:
    """In the child, before it becomes the engine or torchrun: SLURM's SIGUSR2 reaches every process of the job, and
    its default action would kill torchrun at once, before its ranks had checkpointed (torchrun only stops them on
    the SIGTERM that ``checkpoint`` sends, then waits for them). The engine installs its own handler over this one."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class EngineJob(Checkpointable):
    def __init__(self) -> None:
        self._child: subprocess.Popen | None = None

    def __call__(self, run_dir: str, resume: bool = False, processes: int = 1) -> int:
        node = os.uname().nodename
        RunDir(run_dir).update_status(pid=os.getpid(), host=node, slurm_node=node)
        # signalled while the engine was still starting (before its handlers), a run has no checkpoint: it starts over
        resume = resume and (Path(run_dir) / "checkpoints" / "last.pt").is_file()
        with open(Path(run_dir) / "output.log", "ab") as output:
            self._child = subprocess.Popen(engine_argv(run_dir, resume, processes), stdout=output, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, preexec_fn=_ignore_warning_signal)
            return self._child.wait()

    def checkpoint(self, run_dir: str, resume: bool = False, processes: int = 1) -> DelayedSubmission:
        """SLURM's signal before the time limit (or a preemption): the engine checkpoints as when it is stopped (SLURM
        signals it too; SIGTERM covers a signal sent to this process alone), then submitit requeues the same run,
        which resumes from last.pt.

        This runs in a signal handler that interrupted ``Popen.wait`` in ``__call__``: Popen's own wait and poll
        would wait for the lock that interrupted call holds, so the child is watched through /proc."""
        if self._child is not None:
            pid = self._child.pid
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + CHECKPOINT_SECONDS
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        rd = RunDir(run_dir)
        if rd.read_status().get("state") in ("stopped", "running", "queued"):
            rd.update_status(state="requeued", pid=None, requeued_at=now_iso())
        return DelayedSubmission(EngineJob(), run_dir, resume=True, processes=processes)
