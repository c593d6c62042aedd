"""A run that dmltui launches is named, identified, grouped and tagged after the dmltui run in W&B, read back from
the offline run's ``.wandb`` file (what ``wandb sync`` uploads and W&B LEET reads)."""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

from conftest import dmltui

from dmltui import runs as run_ops
from dmltui.compare import differing_keys
from engine.config.schema import Config
from engine.rundir import RunDir

# The .wandb file is LevelDB's log format with W&B's header: 32 KiB blocks of chunks, each a 7-byte header
# (CRC-32 of the type byte and the data, length, type: full, first, middle, last) and a piece of one protobuf Record.
HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version 0
CHUNK = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _ = HEADER.unpack_from(data)
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B transaction log"
    records, pending, position = [], b"", HEADER.size
    while position + CHUNK.size <= len(data):
        if BLOCK - position % BLOCK < CHUNK.size:  # a block's tail too short for a chunk header is padding
            position += BLOCK - position % BLOCK
            continue
        checksum, length, kind = CHUNK.unpack_from(data, position)
        if kind == 0:  # zeros: the end of what was written
            break
        body = data[position + CHUNK.size:position + CHUNK.size + length]
        assert zlib.crc32(body, zlib.crc32(bytes([kind]))) == checksum, f"{path}: a chunk fails its CRC"
        position += CHUNK.size + length
        pending = body if kind in (FULL, FIRST) else pending + body
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_run(run_dir: Path):
    """The run record of the one offline W&B run under *run_dir*."""
    [log] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    [run] = [r.run for r in wandb_records(log) if r.WhichOneof("record_type") == "run"]
    return run


def wait_finished(run_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = dmltui("runs", "show", run_id, "--json")
        record = json.loads(result.stdout)
        if record["state"] not in ("queued", "running"):
            assert record["state"] == "finished", (record["state"], record.get("error"))
            return record
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish within {timeout} s")


def test_the_wandb_fields_dmltui_fills_and_the_ones_it_keeps():
    default = Config()
    named = run_ops.named_for_wandb(default, "20261102-120000-ab12", "margin-b06-s3", ["baseline"])
    assert (named.log.name, named.log.id, named.log.group, named.log.tags) == (
        "margin-b06-s3", "20261102-120000-ab12", "margin-b06", ["baseline"])
    assert (default.log.name, default.log.id, default.log.group) == (None, None, "Sample_Group")  # not changed
    sweep = run_ops.named_for_wandb(default, "x", "margin-0.6-1e-05-s1", ["sweep"])
    assert sweep.log.group == "margin-0.6-1e-05"  # one group per grid point: its seeds
    chosen = Config.model_validate({"log": {"group": "CUB_Margin_b06", "name": "mine", "tags": ["paper", "sweep"]}})
    kept = run_ops.named_for_wandb(chosen, "x", "margin-s0", ["sweep", "v2"])
    assert (kept.log.name, kept.log.group, kept.log.tags) == ("mine", "CUB_Margin_b06", ["paper", "sweep", "v2"])
    # they name a run, not its configuration: compare does not list them among the keys that differ
    two = [{"config": run_ops.named_for_wandb(Config.model_validate({"optim": {"lr": lr}}), run_id, name, tags).to_dict()}
           for lr, run_id, name, tags in ((1e-5, "a", "m-s0", ["x"]), (1e-4, "b", "t-s1", []))]
    assert differing_keys(two) == ["optim.lr"]


def test_a_launched_run_reads_as_itself_in_the_offline_wandb_file_and_a_rerun_gets_its_own_id(tiny, isolated_env,
                                                                                               monkeypatch, tmp_path):
    for variable, folder in (("WANDB_DIR", "wandb"), ("WANDB_CONFIG_DIR", "wandb-config"),
                             ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_DATA_DIR", "wandb-data")):
        monkeypatch.setenv(variable, str(tmp_path / folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    started = dmltui("run", tiny, "--seeds", "3", "--gpus", "cpu", "--name", "wb-margin", "--tag", "baseline",
                     "--tag", "lr-1e-3", "--set", "log.online=true", "--json")
    assert started.returncode == 0, started.stderr
    [record] = json.loads(started.stdout)
    record = wait_finished(record["id"])
    config = RunDir(record["run_dir"]).config.read_text()
    assert f'id = "{record["id"]}"' in config and 'name = "wb-margin-s3"' in config

    run = wandb_run(Path(record["run_dir"]))
    assert (run.display_name, run.run_id, run.run_group, list(run.tags), run.project) == (
        "wb-margin-s3", record["id"], "wb-margin", ["baseline", "lr-1e-3"], "Sample_Project")

    rerun = dmltui("runs", "rerun", record["id"], "--json")
    assert rerun.returncode == 0, rerun.stderr
    again = wait_finished(json.loads(rerun.stdout)["id"])
    run = wandb_run(Path(again["run_dir"]))
    assert again["id"] != record["id"] and (run.run_id, run.display_name, run.run_group, list(run.tags)) == (
        again["id"], "wb-margin-s3", "wb-margin", [])  # the rerun has no tags of its own
