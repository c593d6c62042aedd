"""``dmltui run``: launch runs from presets as detached processes."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from dmltui.cli.common import GPUS_HELP, ExitCode, checked_gpus, fail, print_json, stdout
from dmltui.cli.runs import follow_runs

if TYPE_CHECKING:  # dmltui.launching imports the config modules (pydantic): deferred to the commands that launch
    from dmltui.launching import PlannedRun


def _plan(presets: list[str], overrides: list[str], **kwargs) -> list[PlannedRun]:
    """Resolve and check every run first: an invalid config, seed list, grid, name or tag, or a problem the engine
    would meet before training (a missing dataset...), exits 2 (3 for an unknown preset); nothing starts."""
    from dmltui.launching import plan_runs
    from engine.config.presets import ConfigError, PresetNotFound

    try:
        planned, warnings = plan_runs(presets, overrides, **kwargs)
    except PresetNotFound as error:
        fail(error.lines, ExitCode.NOT_FOUND)
    except ConfigError as error:
        fail(error.lines, ExitCode.USAGE)
    except ValueError as error:
        fail(str(error), ExitCode.USAGE)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return planned


def _slurm_settings(on: str, slurm: list[str] | None):
    """--on and --slurm as launching.slurm_settings makes them (None for this machine); exit 2 with one line for a bad
    setting or a machine without sbatch, before any run directory is made."""
    from dmltui.executors.slurm import SlurmError
    from dmltui.home import SettingError
    from dmltui.launching import slurm_settings

    if on == "local" and slurm:
        fail("--slurm settings need --on slurm", ExitCode.USAGE)
    try:
        return slurm_settings(on, slurm or [])
    except (SlurmError, SettingError) as error:
        fail(str(error), ExitCode.USAGE)
    except ValueError as error:
        fail(f"--on {error}", ExitCode.USAGE)


def _start(planned: list[PlannedRun], **kwargs) -> list[dict]:
    """start_runs, with a config that --gpus cannot serve as exit 2, and a submission SLURM refuses as exit 1."""
    from dmltui.executors.slurm import SlurmError
    from dmltui.launching import LaunchIncomplete, start_runs
    from engine.config.presets import ConfigError

    try:
        return start_runs(planned, **kwargs)
    except ConfigError as error:
        fail(error.lines, ExitCode.USAGE)
    except SlurmError as error:
        fail(str(error), ExitCode.FAILED)
    except LaunchIncomplete as error:  # the started runs go on: name them, then the one line
        for record in error.started:
            print(f"{record['id']}  {record['name']}  {record['state']}", file=sys.stderr)
        fail(str(error), ExitCode.FAILED)
    except OSError as error:  # e.g. the launcher could not be executed; nothing was left behind
        fail(f"the runs could not be started: {error}", ExitCode.FAILED)


GpusPerRunOption = Annotated[int, typer.Option(
    "--gpus-per-run", min=1, help="processes (GPUs) per run, DDP via torchrun: with --gpus auto, or --on slurm (one task)")]
OnOption = Annotated[str, typer.Option("--on", help="where the runs execute: local (this machine) or slurm (one job array)")]
SlurmOption = Annotated[list[str] | None, typer.Option(
    "--slurm", help="KEY=VALUE over the [slurm] table of the config file (partition, time, gpus_per_task...); repeatable")]


def run(
    presets: Annotated[list[str], typer.Argument(help="preset names or files, composed in order (e.g. margin-b12-d cub200)")],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE override (TOML literal); repeatable")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="seeds like 0-4 or 0,3; default: the preset's seeds")] = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help=GPUS_HELP)] = None,
    name: Annotated[str | None, typer.Option("--name", help="run name stem (default: the last preset)")] = None,
    tags: Annotated[list[str] | None, typer.Option("--tag", help="tag the runs; repeatable")] = None,
    gpus_per_run: GpusPerRunOption = 1,
    follow: Annotated[bool, typer.Option("--follow", help="watch the runs' metrics until they end")] = False,
    on: OnOption = "local",
    slurm: SlurmOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the started runs as JSON")] = False,
) -> None:
    """Start training runs in the background (one per seed); they survive this shell and a dropped SSH session."""
    settings = _slurm_settings(on, slurm)
    gpus = checked_gpus(gpus, per_run=gpus_per_run) if settings is None else "cpu"
    planned = _plan(presets, overrides or [], seeds=seeds, name=name, tags=tags or [])
    records = _start(planned, gpus=gpus, tags=tags or [], gpus_per_run=gpus_per_run, slurm_settings=settings)
    if as_json:
        print_json(records)
    else:
        for record in records:
            stdout.print(f"{record['id']}  {record['name']}  {record['state']}  {record['run_dir']}", highlight=False)
    if follow:
        raise typer.Exit(follow_runs([r["id"] for r in records]))


def sweep(
    presets: Annotated[list[str], typer.Argument(help="preset names or files, composed in order")],
    grid: Annotated[list[str], typer.Option("--grid", help="KEY=V1,V2,... ; repeatable, the runs are the product")],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE override for every run")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="seeds like 0-4; default: the preset's seeds")] = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help=GPUS_HELP)] = None,
    tags: Annotated[list[str] | None, typer.Option("--tag", help="tag every run; repeatable")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate and list the runs, start nothing")] = False,
    gpus_per_run: GpusPerRunOption = 1,
    on: OnOption = "local",
    slurm: SlurmOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the runs as JSON")] = False,
) -> None:
    """Launch the product of a parameter grid (times the seeds) as detached runs."""
    settings = _slurm_settings(on, slurm)
    gpus = checked_gpus(gpus, per_run=gpus_per_run) if settings is None else "cpu"
    planned = _plan(presets, overrides or [], seeds=seeds, grid=grid, tags=tags or [])
    if dry_run:
        rows = [{"grid": run.grid, "seed": run.seed, "name": run.name} for run in planned]
        if as_json:
            print_json(rows)
        else:
            for row in rows:
                stdout.print(" ".join(f"{k}={v}" for k, v in row["grid"].items()) + f" seed={row['seed']}", highlight=False)
        return
    records = _start(planned, gpus=gpus, tags=tags or [], gpus_per_run=gpus_per_run, slurm_settings=settings)
    if as_json:
        print_json(records)
    else:
        for record in records:
            stdout.print(f"{record['id']}  {record['name']}  {record['state']}", highlight=False)
