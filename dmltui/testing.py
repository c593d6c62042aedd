"""Synthetic runs for tests, snapshots and benchmarks: real run directories and store records, no training.

``fake_run`` writes what a run of the engine leaves on disk (config.toml, status.json,
metrics.jsonl, train.log, manager.json) with smooth, seeded learning curves, and records it
in the store the way the launcher does. Nothing here is used by the tool itself.
"""

from __future__ import annotations

import json
import math
import random
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dmltui import runs as run_ops
from dmltui.config_summary import config_changes, reference
from dmltui.store import RunStore
from engine.io import atomic_write_json, atomic_write_text

BASE_TIME = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
METRICS = ("e_recall@1", "e_recall@2", "e_recall@4", "nmi", "f1", "mAP_c")


def curve(epoch: int, ceiling: float, rate: float) -> float:
    return ceiling * (1 - math.exp(-rate * epoch))


def fake_metrics(epochs: int, *, seed: int = 0, ceiling: float = 0.6, splits: tuple[str, ...] = ("test",)) -> list[dict[str, Any]]:
    """metrics.jsonl records of *epochs* epochs: train loss/lr and evaluations that rise and level off."""
    rng = random.Random(seed)
    records = []
    for epoch in range(0, epochs + 1):
        time = (BASE_TIME + timedelta(minutes=epoch)).isoformat()
        if epoch:
            loss = 0.2 + 0.8 * math.exp(-0.15 * epoch) + rng.uniform(0, 0.01)
            records.append({"kind": "train", "epoch": epoch, "step": epoch * 50, "split": "train", "time": time,
                            "metrics": {"loss": round(loss, 6), "lr": 1e-5, "epoch_time_s": 60.0, "batches": 50}})
        for split in splits:
            top = ceiling * (1.0 if split == "test" else 1.05)
            values = {name: round(curve(epoch, top * (0.8 + 0.05 * i), 0.2) + 0.1 + rng.uniform(0, 0.005), 6)
                      for i, name in enumerate(METRICS)}
            records.append({"kind": "eval", "epoch": epoch, "step": epoch * 50, "split": split, "time": time,
                            "metrics": values})
    return records


def fake_run(home: Path, *, name: str, state: str = "finished", epochs: int = 10, epoch: int | None = None,
             seed: int = 0, preset: str = "margin-b12-d", dataset: str = "cub200", loss: str = "margin",
             miner: str = "distance", tags: list[str] = (), index: int = 0, pid: int | None = None,
             ceiling: float = 0.6, overrides: dict[str, dict[str, Any]] | None = None,
             store: RunStore | None = None, save: bool = True, splits: tuple[str, ...] = ("test",)) -> dict[str, Any]:
    """One run directory under ``home/runs`` and its store record (stored unless *save* is false); returns the record.
    *splits*: the evaluated splits (a tuning fold run evaluates only ``val``)."""
    from engine.config.schema import Config

    config = Config.model_validate({"data": {"dataset": dataset}, "loss": {"name": loss}, "miner": {"name": miner},
                                    "run": {"seed": seed}, "optim": {"epochs": epochs}, **(overrides or {})})
    done = epochs if epoch is None and state == "finished" else (epoch or 0)
    created = BASE_TIME + timedelta(hours=index)
    run_id = f"{created:%Y%m%d-%H%M%S}-{index:04x}"
    run_dir = home / "runs" / run_id
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.toml", _toml(config.to_dict()))
    metrics = fake_metrics(done, seed=seed, ceiling=ceiling, splits=splits) if done or state != "queued" else []
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in metrics))
    atomic_write_text(run_dir / "train.log", "".join(f"epoch {r['epoch']}: loss {r['metrics']['loss']:.4f}\n"
                                                    for r in metrics if r["kind"] == "train"))
    started = None if state == "queued" else (created + timedelta(minutes=1)).isoformat()
    ended = (created + timedelta(minutes=1 + done)).isoformat() if state not in ("queued", "running") else None
    status = {"state": state, "pid": pid, "host": socket.gethostname(), "created_at": created.isoformat(),
              "started_at": started, "ended_at": ended, "epoch": done, "epochs": epochs, "version": 1,
              "heartbeat_at": datetime.now(UTC).isoformat() if state == "running" else None}
    atomic_write_json(run_dir / "status.json", status)
    manager = {"id": run_id, "name": name, "preset": preset, "presets": [preset], "tags": list(tags), "notes": "",
               "created_at": created.isoformat()}
    atomic_write_json(run_dir / run_ops.MANAGER_FILE, manager)
    record = {**manager, "dataset": dataset, "loss": loss, "miner": miner, "seed": seed,
              "config_changes": config_changes(config.to_dict()), "run_dir": str(run_dir), "host": socket.gethostname(),
              **run_ops.summarize(run_dir)}
    if save:
        (store or RunStore(home / "runs.json")).insert(record)
    return record


def ended_record(i: int, runs: int) -> dict[str, Any]:
    """The store record of finished run *i* of *runs* spread over twelve months of 2026, without a run directory
    (listing a finished run never reads it): how the benchmarks fill a store with a lab's year of runs."""
    month = 1 + i * 12 // runs
    day = f"2026-{month:02d}-{1 + i % 28:02d}"
    run_id = f"2026{month:02d}{1 + i % 28:02d}-{i % 240000:06d}-{i:04x}"
    best = {f"{split}/{metric}": {"value": 0.5 + (i % 97) / 1000, "epoch": 40 + i % 60}
            for split in ("test", "train") for metric in METRICS}
    last = {key: entry["value"] - 0.01 for key, entry in best.items()}
    loss = ["margin", "triplet", "multisimilarity"][i % 3]
    # a sweep over losses, learning rates and seeds: the summary keeps where each run differs from the reference
    swept = {"loss.name": loss, "optim.lr": [1e-5, 3e-5, 1e-4, 3e-4][i % 4], "run.seed": i % 5,
             "log.save_path": "/scratch/runs", "eval.metrics": list(METRICS)}
    changes = {key: value for key, value in swept.items() if value != reference()[key]}
    return {"id": run_id, "name": f"margin-b12-d-s{i % 5}-{i}", "preset": "margin-b12-d",
            "presets": ["presets/base.toml", "presets/cub200.toml", "presets/margin-b12-d.toml"],
            "tags": ["sweep"] if i % 7 else [], "notes": "", "created_at": f"{day}T09:00:00+00:00", "dataset": "cub200",
            "loss": loss, "miner": "distance", "seed": i % 5, "config_changes": changes,
            "run_dir": f"/scratch/runs/{run_id}", "host": "gpu-node-3", "state": "finished", "pid": None,
            "started_at": f"{day}T09:01:00+00:00", "ended_at": f"{day}T12:01:00+00:00", "epoch": 150, "epochs": 150,
            "error": None, "gpus": [0], "best": best, "last": last}


def _toml(config: dict[str, Any]) -> str:
    import tomli_w

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        return value

    return tomli_w.dumps(clean(config))
