"""Composing and starting runs: the one implementation behind ``dmltui run``/``sweep`` and the TUI's new-run screen."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from dmltui import home
from dmltui import runs as run_ops
from dmltui.executors import slurm
from engine.config.presets import ConfigError, ResolvedConfig, resolve


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0..4]; '0,3,7' -> [0, 3, 7]; '2' -> [2]. ValueError names the text and the accepted forms."""
    seeds: list[int] = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if sep else low
        except ValueError:
            raise ValueError(f"{text!r}: expected seeds like 0-4 or 0,3,7") from None
        if high < low:
            raise ValueError(f"{text!r}: a range of seeds goes up, e.g. {high}-{low}")
        seeds += range(low, high + 1)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{text!r}: seeds must be distinct")
    return seeds


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
    """One run to start: its resolved config (seed included), its name, the grid values that made it, and its tags."""

    resolved: ResolvedConfig
    name: str
    grid: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @property
    def seed(self) -> int:
        return self.resolved.config.run.seed


def plan_runs(presets: list[str], overrides: list[str], *, seeds: str | None = None, name: str | None = None,
              grid: list[str] | None = None, tags: list[str] = ()) -> tuple[list[PlannedRun], list[str]]:
    """Resolve and check every run (grid product x seeds) before anything starts; returns the runs and the config
    warnings.

    Raises ConfigError/PresetNotFound (one line per problem: the config, and what can be checked before training,
    such as the dataset's folder) or ValueError (seeds, grid, name, tags)."""
    for tag in tags:
        run_ops.check_tag(tag)
    if name is not None:
        run_ops.check_name(name)
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
            planned.append(PlannedRun(resolved, run_ops.check_name(f"{stem}-s{seed}"), combo, tuple(tags)))
    problems = before_training_problems(planned)
    if problems:
        raise ConfigError(problems)
    return planned, warnings


def before_training_problems(planned: list[PlannedRun]) -> list[str]:
    """The engine's checks of what can fail before training (dataset layout, weights file, writable run folder),
    each distinct problem once. The device is checked against ``--gpus`` by :func:`device_problems`."""
    from engine.preflight import problems

    found: list[str] = []
    checked: set[str] = set()
    for run in planned:
        config = run.resolved.config.to_dict()
        config["run"].pop("seed", None)  # seeds do not change what is checked: a dataset folder is listed once
        key = json.dumps(config, sort_keys=True)
        if key in checked:
            continue
        checked.add(key)
        found += [p for p in problems(run.resolved.config, home.runs_dir() / "new-run", check_device=False) if p not in found]
    return found


def device_problems(planned: list[PlannedRun], gpus: str) -> list[str]:
    """A config that needs CUDA launched on the CPU (``--gpus cpu``, or a machine without GPUs)."""
    if gpus != "cpu":
        return []
    wanting = sorted({run.name for run in planned if run.resolved.config.run.device == "cuda"})
    if not wanting:
        return []
    return [f"run.device = 'cuda' in {', '.join(wanting[:3])}{' …' if len(wanting) > 3 else ''}, but the runs would "
            "train on the CPU (--gpus cpu, or this machine has no GPUs): set run.device='auto' or 'cpu', or give GPUs"]


def slurm_settings(on: str, overrides: list[str] = ()) -> slurm.SlurmSettings | None:
    """Where runs execute, as :func:`start_runs` takes it: None for this machine (``local``); for ``slurm``, the
    user config's [slurm] table with the ``KEY=VALUE`` *overrides* on top, on a machine that can submit. ValueError
    for another place; SlurmError (one line) for a bad setting or a machine without sbatch; home.SettingError for a
    config file that is not TOML."""
    from dmltui.executors import PLACES

    if on not in PLACES:
        raise ValueError(f"{on!r}: expected one of {', '.join(PLACES)}")
    if on == "local":
        return None
    settings = slurm.SlurmSettings.load(list(overrides))
    slurm.check_available()
    return settings


class LaunchIncomplete(RuntimeError):
    """Runs were started, and then one could not be: it and the ones after it were removed (never left ``queued``
    without a process, which a relaunch would duplicate)."""

    def __init__(self, started: list[dict[str, Any]], failed: dict[str, Any], removed: int, cause: BaseException):
        super().__init__(started, failed, removed, cause)
        self.started, self.failed, self.removed, self.cause = started, failed, removed, cause

    def __str__(self) -> str:
        total = len(self.started) + self.removed
        return (f"started {len(self.started)} of {total} runs; {self.failed['name']} could not be started "
                f"({type(self.cause).__name__}: {self.cause}), so it and the {self.removed - 1} after it were removed")


def start_runs(planned: list[PlannedRun], *, gpus: str = "cpu", tags: list[str] = (), gpus_per_run: int = 1,
               slurm_settings: slurm.SlurmSettings | None = None) -> list[dict[str, Any]]:
    """Prepare every run's directory and record them all in one store write (tagged with *tags* and their planned
    tags), then start them: each detached on this machine, or, with *slurm_settings*, all as one SLURM job array.
    Returns their records. *gpus* is what
    :func:`resolve_gpus` returned; ConfigError when it cannot serve the configs; SlurmError when SLURM refuses
    (then the runs' directories and records are removed again). A local launch that fails at run k removes runs
    k.. and raises LaunchIncomplete (naming the started ones), or the error itself when none had started."""
    problems = device_problems(planned, gpus) if slurm_settings is None else []
    if problems:
        raise ConfigError(problems)
    sweep_tag = ["sweep"] if any(run.grid for run in planned) and "sweep" not in tags else []
    records = run_ops.prepare_runs([(run.resolved, run.name) for run in planned], tags=[*tags, *sweep_tag],
                                   run_tags=[list(run.tags) for run in planned])
    if slurm_settings is None:
        started: list[dict[str, Any]] = []
        for index, record in enumerate(records):
            try:
                started.append(run_ops.launch_detached(record, gpus=gpus, count=gpus_per_run))
            except Exception as error:
                run_ops.discard(records[index:])
                if not started:
                    raise
                raise LaunchIncomplete(started, record, len(records) - index, error) from error
        return started
    try:
        slurm.submit([record["run_dir"] for record in records], slurm_settings, processes=gpus_per_run)
    except BaseException:
        run_ops.discard(records)  # nothing was submitted: no run is left behind
        raise
    return [{**record, **run_ops.summarize(record["run_dir"])} for record in records]
