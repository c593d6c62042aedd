"""What `dmltui run` refuses before anything exists: GPUs this machine lacks, a config the engine would reject before
training, malformed names and tags. Each is one line on stderr, exit 2, and no run directory or store record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, dmltui

from dmltui import runs as run_ops
from engine.rundir import FINAL_STATES, RunDir


def refused(*args: str, env: dict | None = None) -> str:
    """Run the command; assert it was refused the way the project promises; return its one error line."""
    result = dmltui(*args, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    home = Path(os.environ["DMLTUI_HOME"])
    assert not (home / "runs").exists() or list((home / "runs").iterdir()) == []  # no run directory, not even a staging one
    assert run_ops.open_store().all() == []
    return lines[0]


def test_gpus_this_machine_lacks_are_refused(tiny, fake_gpus, monkeypatch):
    line = refused("run", tiny, "--gpus", "7")
    assert line == "error: --gpus 7: no GPU 7 here: this machine has no GPUs (NVML finds none); use --gpus cpu to train on the CPU"
    line = refused("run", tiny, "--gpus", "auto")
    assert line == "error: --gpus auto: this machine has no GPUs (NVML finds none); use --gpus cpu to train on the CPU"
    assert refused("sweep", tiny, "--grid", "optim.lr=1e-3,1e-4", "--gpus", "0", "--dry-run").startswith("error: --gpus 0: no GPU 0")
    fake_gpus(2)
    assert refused("run", tiny, "--gpus", "1,7") == "error: --gpus 1,7: no GPU 7 here: this machine has GPUs 0, 1"
    monkeypatch.setenv("DMLTUI_GPUS", "1")
    assert refused("run", tiny, "--gpus", "0") == ("error: --gpus 0: no GPU 0 here: this machine has GPUs 0, 1, "
                                                   "of which $DMLTUI_GPUS='1' allows 1")
    assert refused("run", tiny, "--gpus", "auto", "--gpus-per-run", "2").startswith("error: --gpus-per-run 2: ")


def test_without_gpus_the_default_is_the_cpu(tiny):
    result = dmltui("run", tiny, "--json")
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)
    run_dir = RunDir(record["run_dir"])
    deadline = time.monotonic() + 120
    while run_dir.read_status().get("state") not in FINAL_STATES:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    status = run_dir.read_status()
    assert status["state"] == "finished" and "gpus" not in status and "waiting_for" not in status
    assert "device cpu" in run_dir.log.read_text()


def test_a_config_that_needs_cuda_is_refused_on_a_machine_without(tiny):
    line = refused("run", "tiny-cuda")
    assert line == ("error: run.device = 'cuda' in tiny-cuda-s0, but the runs would train on the CPU (--gpus cpu, or this "
                    "machine has no GPUs): set run.device='auto' or 'cpu', or give GPUs")


def test_what_the_engine_would_reject_before_training_is_refused_before_the_run_exists(tiny, tmp_path):
    line = refused("run", tiny, "--set", "data.dataset='cub200'", "--set", f"data.source_path='{tmp_path / 'nowhere'}'")
    assert str(tmp_path / "nowhere") in line and "cub200" in line
    line = refused("run", tiny, "--set", f"model.weights_path='{tmp_path / 'missing.pth'}'")
    assert "model.weights_path" in line and "missing.pth" in line


@pytest.mark.parametrize("args, expected", [
    (["--tag", "two words"], "error: tag 'two words': a tag is 1-64 characters without spaces, commas or control characters"),
    (["--tag", "a,b"], "error: tag 'a,b': a tag is 1-64 characters without spaces, commas or control characters"),
    (["--tag", "x" * 300], "error: tag '" + "x" * 40 + "…' (300 characters): a tag is 1-64 characters without spaces, "
                           "commas or control characters"),
    (["--name", "n" * 300], "error: run name '" + "n" * 40 + "…' (300 characters): a name is 1-128 printable characters, "
                            "not blank"),
    (["--seeds", "5-2"], "error: '5-2': a range of seeds goes up, e.g. 2-5"),
    (["--seeds", "1,1"], "error: '1,1': seeds must be distinct"),
])
def test_malformed_names_and_tags_are_refused(tiny, args, expected):
    assert refused("run", tiny, *args) == expected


def test_unicode_tags_and_names_round_trip(tiny, isolated_env):
    from dmltui.testing import fake_run

    record = fake_run(isolated_env, name="Ωmega run — ø", tags=[])
    result = dmltui("runs", "tag", record["id"], "λ=0.6", "größe", "東京")
    assert result.returncode == 0, result.stderr
    assert dmltui("runs", "tag", record["id"], "bad tag").returncode == 2
    shown = json.loads(dmltui("runs", "show", record["id"], "--json").stdout)
    assert shown["tags"] == ["λ=0.6", "größe", "東京"] and shown["name"] == "Ωmega run — ø"
    listed = json.loads(dmltui("runs", "list", "--json", "--tag", "東京").stdout)
    assert [r["id"] for r in listed] == [record["id"]]
    manager = json.loads((Path(record["run_dir"]) / "manager.json").read_text())
    assert manager["tags"] == shown["tags"]


def test_the_launcher_never_falls_back_to_the_cpu(tiny, isolated_env):
    from dmltui.testing import fake_run

    record = fake_run(isolated_env, name="queued", state="queued", epochs=1)
    result = subprocess.run([sys.executable, "-m", "dmltui.worker", "--run-dir", record["run_dir"], "--gpus", "auto"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert result.stderr == "error: --gpus auto: 1 GPU(s) wanted, this machine has no GPUs (NVML finds none)\n"
    status = json.loads((Path(record["run_dir"]) / "status.json").read_text())
    assert status["state"] == "failed" and "no GPUs" in status["error"]


def test_unknown_and_ambiguous_ids_are_told_apart(isolated_env):
    from dmltui.testing import fake_run

    first = fake_run(isolated_env, name="a", index=0)
    second = fake_run(isolated_env, name="b", index=1)
    prefix = os.path.commonprefix([first["id"], second["id"]])
    result = dmltui("runs", "show", prefix)
    assert result.returncode == 3
    assert result.stderr == (f"error: {prefix!r} is the start of 2 run ids: {first['id']}, {second['id']}; "
                             "give more of the id\n")
    result = dmltui("runs", "show", "2099")
    assert result.returncode == 3 and result.stderr == "error: no run with id '2099' (and no id starts with it)\n"


def test_one_launch_is_one_store_write(tiny, monkeypatch):
    from dmltui.launching import plan_runs, start_runs
    from dmltui.store import AtomicJSONStorage

    writes = []
    real_flush = AtomicJSONStorage.flush
    monkeypatch.setattr(AtomicJSONStorage, "flush", lambda self: writes.append(self._dirty) or real_flush(self))
    planned, _ = plan_runs([tiny], [], seeds="0-2")
    records = start_runs(planned, gpus="cpu", tags=["batch"])
    assert writes.count(True) == 1  # three runs, their tags included: one write of the store file
    stored = run_ops.open_store().all()
    assert sorted(r["id"] for r in stored) == sorted(r["id"] for r in records)
    assert all(r["tags"] == ["batch"] and r["state"] == "queued" for r in stored)
    for record in records:  # the launchers are detached: wait for them, so that the test leaves nothing running
        deadline = time.monotonic() + 120
        while RunDir(record["run_dir"]).read_status().get("state") not in FINAL_STATES:
            assert time.monotonic() < deadline
            time.sleep(0.3)
