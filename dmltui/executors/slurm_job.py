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

REQUEUE_REQUEST = {"requeue": True, "reason": "SLURM's warning signal (time limit or preemption)"}


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
    """One run as a submitit job. *checkpoint_seconds*: how long the engine may take to checkpoint after the warning
    signal (``SlurmSettings.checkpoint_seconds``)."""

    def __init__(self, checkpoint_seconds: float = 60.0) -> None:
        self.checkpoint_seconds = checkpoint_seconds
        self._child: subprocess.Popen | None = None

    def __call__(self, run_dir: str, resume: bool = False, processes: int = 1) -> int:
        node = os.uname().nodename
        rd = RunDir(run_dir)
        rd.update_status(pid=os.getpid(), host=node, slurm_node=node)
        # signalled while the engine was still starting (before its handlers), a run has no checkpoint: it starts over
        resume = resume and (Path(run_dir) / "checkpoints" / "last.pt").is_file()
        with open(Path(run_dir) / "output.log", "ab") as output:
            self._child = subprocess.Popen(engine_argv(run_dir, resume, processes), stdout=output, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, preexec_fn=_ignore_warning_signal)
            try:
                return self._child.wait()
            except SystemExit:  # submitit requeued the job (``scontrol requeue``) and exits: the run stays requeued
                raise
            except BaseException as error:
                # submitit decided not to requeue (raised from its signal handler, which interrupted the wait above):
                # out of requeues, a user's stop, or scontrol refused. The run is not coming back by itself.
                if rd.read_status().get("state") == "requeued":
                    rd.update_status(state="stopped", ended_at=now_iso(), stop_request=None,
                                     error=f"not requeued: {_why(error)}; `dmltui runs resume` continues it")
                raise

    def checkpoint(self, run_dir: str, resume: bool = False, processes: int = 1) -> DelayedSubmission | None:
        """SLURM's signal before the time limit (or a preemption): the engine checkpoints for a requeue (SLURM signals
        it too; SIGTERM covers a signal sent to this process alone, and ``stop_request`` tells it why), then submitit
        requeues the same run, which resumes from last.pt. After a user's stop, no requeue (None).

        This runs in a signal handler that interrupted ``Popen.wait`` in ``__call__``: Popen's own wait and poll
        would wait for the lock that interrupted call holds, so the child is watched through /proc."""
        rd = RunDir(run_dir)
        request = rd.read_status().get("stop_request") or {}
        users_stop = bool(request) and not request.get("requeue")
        if not users_stop:
            rd.update_status(stop_request=REQUEUE_REQUEST)
        if self._child is not None:
            pid = self._child.pid
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + self.checkpoint_seconds
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        if users_stop:
            return None
        if rd.read_status().get("state") in ("running", "queued"):  # the engine had not started, or did not stop in time
            rd.update_status(state="requeued", pid=None, requeued_at=now_iso())
        return DelayedSubmission(EngineJob(self.checkpoint_seconds), run_dir, resume=True, processes=processes)


def _why(error: BaseException) -> str:
    """submitit's reason ("Job not requeued because: timed-out too many times.") without its preamble."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.removeprefix("Job not requeued because: ").rstrip(".")
