"""Composing and starting runs: the one implementation behind ``dmltui run``/``sweep`` and the TUI's new-run screen."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from dmltui import home
from dmltui import runs as run_ops
from engine.config.presets import ResolvedConfig, resolve


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0..4]; '0,3,7' -> [0, 3, 7]; '2' -> [2]. ValueError names the text and the accepted forms."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            first, sep, last = part.strip().partition("-")
            seeds += list(range(int(first), int(last) + 1)) if sep else [int(first)]
    except ValueError:
        raise ValueError(f"{text!r}: expected seeds like 0-4 or 0,3,7") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{text!r}: seeds must be distinct")
    return seeds


def check_gpus(text: str) -> str:
    """'auto', 'cpu' or a list of GPU indices such as '0,1'; ValueError otherwise."""
    text = text.strip()
    if text in ("auto", "cpu"):
        return text
    from dmltui.gpus import parse_gpu_list

    parse_gpu_list(text)
    return text


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """['loss.name=margin,triplet'] -> [('loss.name', ['margin', 'triplet'])]; ValueError on a malformed axis."""
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not choices:
            raise ValueError(f"{item!r}: expected KEY=V1,V2,... e.g. loss.name=margin,triplet")
        axes.append((key.strip(), choices))
    return axes


@dataclass
class PlannedRun:
    """One run to start: its resolved config (seed included), its name, and the grid values that made it."""

    resolved: ResolvedConfig
    name: str
    grid: dict[str, str] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.resolved.config.run.seed


def plan_runs(presets: list[str], overrides: list[str], *, seeds: str | None = None, name: str | None = None,
              grid: list[str] | None = None) -> tuple[list[PlannedRun], list[str]]:
    """Resolve every run (grid product x seeds) before anything starts; returns the runs and the config warnings.

    Raises ConfigError/PresetNotFound (one line per problem) or ValueError (seeds, grid)."""
    library = home.preset_library()
    axes = parse_grid(grid or [])
    combos = [dict(zip([k for k, _ in axes], values, strict=True)) for values in itertools.product(*[v for _, v in axes])]
    planned: list[PlannedRun] = []
    warnings: list[str] = []
    for combo in combos:
        extra = [*overrides, *(f"{k}={v}" for k, v in combo.items())]
        base = resolve(presets, extra, library=library)
        warnings += [w for w in base.warnings if w not in warnings]
        seed_list = parse_seeds(seeds) if seeds else (base.seeds or [base.config.run.seed])
        stem = name or base.preset or "custom"
        if combo:
            stem = f"{name or presets[-1]}-" + "-".join(combo.values())
        for seed in seed_list:
            resolved = resolve(presets, [*extra, f"run.seed={seed}"], library=library)
            planned.append(PlannedRun(resolved, f"{stem}-s{seed}", combo))
    return planned, warnings


def start_runs(planned: list[PlannedRun], *, gpus: str = "auto", tags: list[str] = (), gpus_per_run: int = 1) -> list[dict[str, Any]]:
    """Prepare each run's directory and store record, then start it detached; returns the reconciled records."""
    records = []
    for run in planned:
        record = run_ops.prepare_run(run.resolved, name=run.name)
        run_tags = [*tags, *(["sweep"] if run.grid and "sweep" not in tags else [])]
        if run_tags:
            record = run_ops.annotate(record, add_tags=run_tags)
        run_ops.launch_detached(record, gpus=gpus, count=gpus_per_run)
        records.append(run_ops.reconcile(record["id"]))
    return records
