"""The run manager through its real entry point: detached runs, states, stop/resume, queue, store maintenance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, dmltui

from engine.rundir import RunDir


def runs_json(*args: str) -> list[dict]:
    result = dmltui("runs", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def show(run_id: str) -> dict:
    result = dmltui("runs", "show", run_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for(predicate, timeout: float, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def status(record: dict) -> dict:
    return RunDir(record["run_dir"]).read_status()


def launch(*args: str) -> list[dict]:
    result = dmltui("run", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_detached_runs_go_queued_running_finished_and_reach_the_store(tiny):
    records = launch(tiny, "--seeds", "0-1", "--gpus", "cpu", "--tag", "t1")
    assert [r["seed"] for r in records] == [0, 1] and all(r["tags"] == ["t1"] for r in records)
    assert all(r["state"] in ("queued", "running") for r in records)
    for record in records:
        wait_for(lambda r=record: status(r).get("state") == "finished", 180)
    listed = {r["id"]: r for r in runs_json("--tag", "t1")}
    assert set(listed) == {r["id"] for r in records}
    for record in listed.values():
        assert record["state"] == "finished" and record["epoch"] == 2
        assert 0 < record["best"]["test/e_recall@1"]["value"] <= 1
        assert (Path(record["run_dir"]) / "output.log").exists()
    assert runs_json("--state", "running") == []
    assert [r["seed"] for r in runs_json("--sort", "seed", "--asc")] == [0, 1]


@pytest.mark.slow
def test_kill_9_is_crashed_within_10_s_and_resume_continues(tiny):
    [record] = launch(tiny, "--set", "optim.epochs=400", "--gpus", "cpu")
    wait_for(lambda: status(record).get("epoch", 0) >= 1 and (RunDir(record["run_dir"]).checkpoints / "last.pt").exists(), 120)
    pid = status(record)["pid"]
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    from dmltui.runs import observe

    wait_for(lambda: observe(record["run_dir"])[1].state == "crashed", 10, interval=0.05)
    assert time.monotonic() - killed_at < 10
    assert show(record["id"])["state"] == "crashed"  # and the CLI reports it
    checkpoint_epoch = RunDir(record["run_dir"]).read_status()["epoch"]
    resumed = dmltui("runs", "resume", record["id"], "--gpus", "cpu", "--json")
    assert resumed.returncode == 0, resumed.stderr
    wait_for(lambda: status(record).get("state") == "running" and status(record).get("epoch", 0) > checkpoint_epoch + 1, 120)
    stopped = dmltui("runs", "stop", record["id"], "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)[0]["state"] == "stopped"
    epochs = [r["epoch"] for r in RunDir(record["run_dir"]).read_metrics() if r["kind"] == "train"]
    assert epochs == list(range(1, len(epochs) + 1))  # no epoch twice, none missing across the resume
    assert "resumed after epoch" in RunDir(record["run_dir"]).log.read_text()


@pytest.mark.slow
def test_sighup_to_the_launching_shell_leaves_runs_running(tiny):
    cli = str(Path(sys.executable).with_name("dmltui"))
    # SIGHUP as a login shell has it (a runner started under nohup would hand down "ignore" and the CLI would not end)
    shell = subprocess.Popen([cli, "run", tiny, "--set", "optim.epochs=400", "--gpus", "cpu", "--follow"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, cwd=REPO, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    from dmltui.runs import open_store

    record = wait_for(lambda: (open_store().all() or [None])[0], 60, interval=0.5)
    wait_for(lambda: status(record).get("state") == "running", 60)
    os.killpg(shell.pid, signal.SIGHUP)  # what an SSH drop sends to the session
    shell.wait(timeout=30)
    time.sleep(3)
    assert show(record["id"])["state"] == "running"
    assert dmltui("runs", "stop", record["id"]).returncode == 0


@pytest.mark.slow
def test_gpu_queue_one_lease_per_gpu(tiny, fake_gpus, monkeypatch):
    fake_gpus(2)  # pretend this machine has two GPUs (the engine then runs on the CPU: the preset says so)...
    monkeypatch.setenv("DMLTUI_GPUS", "0")  # ...of which the manager may use one
    first = launch(tiny, "--set", "optim.epochs=400", "--seeds", "0", "--gpus", "auto")[0]
    wait_for(lambda: status(first).get("state") == "running", 60)
    second = launch(tiny, "--seeds", "1", "--gpus", "auto")[0]
    wait_for(lambda: status(second).get("waiting_for"), 30)
    time.sleep(2)
    waiting = show(second["id"])
    assert waiting["state"] == "queued" and status(second)["waiting_for"] == "1 GPU(s) of [0]"
    assert dmltui("runs", "stop", first["id"]).returncode == 0
    wait_for(lambda: status(second).get("state") in ("running", "finished"), 60)
    assert status(second)["gpus"] == [0]
    wait_for(lambda: status(second).get("state") == "finished", 120)  # two tiny epochs


@pytest.mark.slow
def test_stop_a_queued_run(tiny, fake_gpus):
    fake_gpus(1)
    holder = launch(tiny, "--set", "optim.epochs=400", "--seeds", "0", "--gpus", "auto")[0]
    wait_for(lambda: status(holder).get("state") == "running", 60)
    queued = launch(tiny, "--seeds", "1", "--gpus", "auto")[0]
    wait_for(lambda: status(queued).get("waiting_for"), 30)
    for record in (queued, holder):
        result = dmltui("runs", "stop", record["id"], "--json")
        assert result.returncode == 0 and json.loads(result.stdout)[0]["state"] == "stopped"


@pytest.mark.slow
def test_store_rebuild_restores_every_run_with_tags_and_notes(tiny, isolated_env):
    records = launch(tiny, "--seeds", "0-1", "--gpus", "cpu", "--set", "optim.epochs=1")
    for record in records:
        wait_for(lambda r=record: status(r).get("state") == "finished", 120)
    assert dmltui("runs", "tag", records[0]["id"], "keep", "best").returncode == 0
    assert dmltui("runs", "note", records[1]["id"], "lr too high?").returncode == 0
    before = {r["id"]: r for r in runs_json()}
    (isolated_env / "runs.json").write_text('{"runs": {"1": ')  # corrupt
    broken = dmltui("runs", "list")
    assert broken.returncode == 1 and "is corrupt" in broken.stderr and "dmltui db rebuild" in broken.stderr
    rebuilt = dmltui("db", "rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    report = json.loads(rebuilt.stdout)
    assert Path(report["previous"]).read_text() == '{"runs": {"1": '  # kept, not deleted
    assert list(Path(f"{report['previous']}.d").glob("ended-*.json"))  # with its partitions of ended runs
    after = {r["id"]: r for r in runs_json()}
    assert set(after) == set(before)
    for run_id, record in before.items():
        for key in ("name", "state", "best", "tags", "notes", "run_dir", "preset"):
            assert after[run_id][key] == record[key], key
        assert show(run_id)["config"]["optim"]["epochs"] == 1  # from the run dir's config.toml


@pytest.mark.slow
def test_import_rerun_rm_and_sweep(tiny, tmp_path):
    run_dir = tmp_path / "outside"
    engine = subprocess.run([sys.executable, "-m", "engine", "--preset", "tiny", "--run-dir", str(run_dir),
                             "--set", "optim.epochs=1"], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "DMLTUI_PRESETS": str(Path(os.environ["DMLTUI_HOME"]) / "presets")})
    assert engine.returncode == 0, engine.stderr
    imported = dmltui("import", str(run_dir), "--json")
    assert imported.returncode == 0, imported.stderr
    [record] = json.loads(imported.stdout)
    assert record["state"] == "finished" and record["run_dir"] == str(run_dir.resolve())
    assert dmltui("import", str(run_dir)).stderr.strip().endswith("is already recorded")
    assert dmltui("import", str(tmp_path)).returncode == 3

    again = dmltui("runs", "rerun", record["id"], "--gpus", "cpu", "--json")
    assert again.returncode == 0, again.stderr
    new = json.loads(again.stdout)
    original, copied = show(record["id"])["config"], show(new["id"])["config"]  # read from the run dirs
    wandb_keys = ("name", "id", "group", "tags")  # the W&B identity dmltui gives the new run: its own

    def without_wandb_identity(config: dict) -> dict:
        return {**config, "log": {k: v for k, v in config["log"].items() if k not in wandb_keys}}

    assert new["id"] != record["id"] and without_wandb_identity(copied) == without_wandb_identity(original)
    assert {key: copied["log"].get(key) for key in wandb_keys} == {"name": "outside", "id": new["id"],
                                                                   "group": "outside", "tags": []}
    wait_for(lambda: status(new).get("state") == "finished", 120)

    declined = subprocess.run([str(Path(sys.executable).with_name("dmltui")), "runs", "rm", record["id"]],
                              input="n\n", capture_output=True, text=True)
    assert declined.returncode == 1 and run_dir.exists()
    assert dmltui("runs", "rm", record["id"], "--yes").returncode == 0
    assert not run_dir.exists() and record["id"] not in {r["id"] for r in runs_json()}
    assert dmltui("runs", "rm", new["id"], "--keep-files", "--yes").returncode == 0
    assert Path(new["run_dir"]).exists()

    dry = dmltui("sweep", tiny, "--grid", "loss.margin.beta=0.6,1.2", "--grid", "optim.lr=1e-3,1e-4", "--seeds", "0-1",
                 "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert len(planned) == 8 and {"loss.margin.beta": "0.6", "optim.lr": "1e-3"} in [p["grid"] for p in planned]
    bad = dmltui("sweep", tiny, "--grid", "loss.margin.beta=0.6,high", "--seeds", "0")
    assert bad.returncode == 2 and "loss.margin.beta = 'high'" in bad.stderr
    assert runs_json() == []  # nothing launched by the dry run or the invalid sweep


def test_run_errors_and_doctor(tiny):
    assert dmltui("run", "nosuch").returncode == 3
    assert dmltui("run", tiny, "--set", "optim.epochs=-1").returncode == 2
    assert dmltui("run", tiny, "--gpus", "0,x").returncode == 2
    assert dmltui("runs", "stop", "nope").returncode == 3
    doctor = dmltui("doctor", "--json")
    assert doctor.returncode == 0, doctor.stdout
    checks = {c["check"]: c for c in json.loads(doctor.stdout)}
    assert {"python", "torch", "cuda", "gpus", "faiss", "wandb", "store", "data"} <= set(checks)


def test_runs_list_shows_whole_values_and_leaves_out_the_least_important_columns_at_80(isolated_env):
    from dmltui.testing import fake_run

    records = [fake_run(isolated_env, name="margin-b12-d-long-sweep-s0", index=0, state="stopped",
                        tags=["paper", "sweep-lr"]),
               fake_run(isolated_env, name="quickstart-s1", index=1, loss="multisimilarity", dataset="glyphs")]
    wide = dmltui("runs", "list", env={"COLUMNS": "200"})
    assert wide.returncode == 0 and wide.stderr == ""
    assert wide.stdout.splitlines()[0].split() == ["id", "name", "state", "dataset", "loss/miner", "epoch", "R@1", "tags"]
    assert "paper,sweep-lr" in wide.stdout and "multisimilarity/distance" in wide.stdout
    narrow = dmltui("runs", "list", env={"COLUMNS": "80"})
    assert narrow.returncode == 0 and "…" not in narrow.stdout
    lines = narrow.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    assert lines[0].split() == ["id", "name", "state", "dataset", "R@1"]  # tags, loss/miner, then epoch went first
    for record in records:  # whole values
        [line] = [line for line in lines if line.startswith(record["id"])]
        assert record["name"] in line and record["state"] in line and record["dataset"] in line
    assert narrow.stderr.strip() == "note: 80 columns leave out loss/miner, epoch, tags (a wider terminal, or --json, shows them)"
    script = Path(sys.executable).with_name("dmltui")  # into a pipe, without $COLUMNS: everything, nothing cut
    piped = subprocess.run([str(script), "runs", "list"], capture_output=True, text=True, timeout=120,
                           env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")})
    assert piped.stdout == wide.stdout and piped.stderr == ""
