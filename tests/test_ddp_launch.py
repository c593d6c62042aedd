"""dmltui.ddp_launch: torchrun whose stop leaves no SignalException traceback in the run's output, and the DDP run
command that goes through it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from dmltui.worker import engine_argv
from engine.config.presets import resolve
from engine.rundir import RunDir

# A rank that says when it runs and when SIGTERM (torchrun's closing signal) has stopped it.
RANK = """\
import os, signal, sys, time
rank = os.environ["RANK"]
def stop(signum, frame):
    print(f"rank {rank} stopped", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print(f"rank {rank} ready", flush=True)
time.sleep(300)
"""


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def stop_in_flight(command: list[str], output: Path, started, timeout: float = 60) -> tuple[int, str]:
    """Start *command* in a session of its own (as the run manager starts a run), SIGTERM its process group once
    *started*(output so far) holds (as ``dmltui stop`` does), and return its exit status and all it printed."""
    with open(output, "wb") as sink:
        process = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for(lambda: started(output.read_text()) or process.poll() is not None, timeout, "the ranks starting")
        assert process.poll() is None, output.read_text()[-3000:]
        os.killpg(process.pid, signal.SIGTERM)
        return process.wait(timeout=timeout), output.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def both_ready(text: str) -> bool:
    return "rank 0 ready" in text and "rank 1 ready" in text


def test_a_stopped_launch_stops_its_ranks_and_exits_quietly_with_the_signals_status(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    code, output = stop_in_flight([sys.executable, "-m", "dmltui.ddp_launch", "--standalone", "--nproc-per-node=2",
                                   str(script)], tmp_path / "output.log", both_ready)
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert "rank 0 stopped" in output and "rank 1 stopped" in output  # torchrun stopped them before it exited
    assert "Traceback" not in output and "SignalException" not in output, output


def test_plain_torchrun_prints_the_traceback_the_launcher_leaves_out(tmp_path):
    """The launcher's reason to be: without it, the same stop ends in torchrun's SignalException traceback."""
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    code, output = stop_in_flight([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                                   str(script)], tmp_path / "output.log", both_ready)
    assert code == 1
    assert "Traceback" in output and "SignalException" in output


def test_a_run_of_several_processes_is_launched_through_the_quiet_launcher():
    assert engine_argv("RUN", resume=True, processes=2) == [
        sys.executable, "-m", "dmltui.ddp_launch", "--standalone", "--nproc-per-node=2",
        "-m", "engine", "--run-dir", "RUN", "--resume"]
    assert engine_argv("RUN", resume=False) == [sys.executable, "-m", "engine", "--run-dir", "RUN"]


@pytest.mark.slow
def test_a_stopped_ddp_run_ends_stopped_with_a_clean_output_log(tmp_path):
    """The real thing: two gloo ranks of the engine started by engine_argv, stopped during training."""
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    run_dir.write_config(resolve(["quickstart", "digits"], [
        "optim.epochs=500", "data.image_size=8", "run.device='cpu'", "eval.at_start=false",
        "eval.raw_pixel_baseline=false"]).to_toml())
    code, output = stop_in_flight(engine_argv(str(run_dir.path), resume=False, processes=2), tmp_path / "output.log",
                                  lambda _: run_dir.read_status().get("epoch", 0) >= 1, timeout=240)
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert "Traceback" not in output and "SignalException" not in output, output
    status = run_dir.read_status()
    assert status["state"] == "stopped" and status["world_size"] == 2
