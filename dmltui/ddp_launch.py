"""torchrun for a DDP run, without the traceback it prints on every stop.

    python -m dmltui.ddp_launch --standalone --nproc-per-node=2 -m engine --run-dir DIR

The arguments are torchrun's (``python -m torch.distributed.run``). A stop signal (SIGTERM from ``dmltui runs stop`` or
SLURM, SIGINT, SIGHUP, SIGQUIT) reaching torchrun's agent makes it stop the ranks and then raise SignalException,
which torchrun lets out as a traceback into the run's output.log. Here that exception ends the launcher as the
signal's own exit status would, 128 + the signal number, and says nothing more: the ranks have stopped by then and
the run's state is in its status.json.
"""

from __future__ import annotations

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main as torchrun


def main(argv: list[str] | None = None) -> None:
    try:
        torchrun(argv)
    except SignalException as stopped:  # raised once the agent has shut the ranks down
        raise SystemExit(128 + stopped.sigval) from None


if __name__ == "__main__":
    main()
