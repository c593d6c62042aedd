"""``dmltui run``: launch runs from presets as detached processes."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from dmltui import home
from dmltui import runs as run_ops
from dmltui.cli.common import ExitCode, fail, print_json, stdout
from engine.config.presets import ConfigError, PresetNotFound, resolve


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0..4]; '0,3,7' -> [0, 3, 7]; '2' -> [2]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            first, sep, last = part.strip().partition("-")
            seeds += list(range(int(first), int(last) + 1)) if sep else [int(first)]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected seeds like 0-4 or 0,3,7") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise typer.BadParameter(f"{text!r}: seeds must be distinct")
    return seeds


def validate_gpus(text: str) -> str:
    if text in ("auto", "cpu"):
        return text
    from dmltui.gpus import parse_gpu_list

    try:
        parse_gpu_list(text)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    return text


def launch(
    presets: list[str],
    overrides: list[str],
    *,
    seeds: str | None,
    gpus: str,
    name: str | None,
    tags: list[str],
    gpus_per_run: int = 1,
) -> list[dict]:
    """Resolve (once per seed), prepare and start detached runs; nothing starts if any config is invalid."""
    library = home.preset_library()
    try:
        base = resolve(presets, overrides, library=library)
        seed_list = parse_seeds(seeds) if seeds else (base.seeds or [base.config.run.seed])
        resolved = [resolve(presets, [*overrides, f"run.seed={seed}"], library=library) for seed in seed_list]
    except PresetNotFound as error:
        fail(error.lines, ExitCode.NOT_FOUND)
    except ConfigError as error:
        fail(error.lines, ExitCode.USAGE)
    for warning in base.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    records = []
    for item in resolved:
        run_name = f"{name or item.preset or 'custom'}-s{item.config.run.seed}"
        record = run_ops.prepare_run(item, name=run_name)
        if tags:
            record = run_ops.annotate(record, add_tags=tags)
        run_ops.launch_detached(record, gpus=gpus, count=gpus_per_run)
        records.append(run_ops.reconcile(record["id"]))
    return records


def run(
    presets: Annotated[list[str], typer.Argument(help="preset names or files, composed in order (e.g. margin-b12-d cub200)")],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE override (TOML literal); repeatable")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="seeds like 0-4 or 0,3; default: the preset's seeds")] = None,
    gpus: Annotated[str, typer.Option("--gpus", help="auto (queue for a free GPU), cpu, or indices like 0,1",
                                      callback=validate_gpus)] = "auto",
    name: Annotated[str | None, typer.Option("--name", help="run name stem (default: the last preset)")] = None,
    tags: Annotated[list[str] | None, typer.Option("--tag", help="tag the runs; repeatable")] = None,
    gpus_per_run: Annotated[int, typer.Option("--gpus-per-run", min=1, help="with --gpus auto: GPUs per run (DDP via torchrun)")] = 1,
    follow: Annotated[bool, typer.Option("--follow", help="watch the runs' metrics until they end")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the started runs as JSON")] = False,
) -> None:
    """Start training runs in the background (one per seed); they survive this shell and a dropped SSH session."""
    records = launch(presets, overrides or [], seeds=seeds, gpus=gpus, name=name, tags=tags or [], gpus_per_run=gpus_per_run)
    if as_json:
        print_json(records)
    else:
        for record in records:
            stdout.print(f"{record['id']}  {record['name']}  {record['state']}  {record['run_dir']}", highlight=False)
    if follow:
        from dmltui.cli.runs import follow_runs

        raise typer.Exit(follow_runs([r["id"] for r in records]))


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """--grid loss.name=margin,triplet -> ('loss.name', ['margin', 'triplet'])."""
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not choices:
            raise typer.BadParameter(f"{item!r}: expected KEY=V1,V2,... e.g. loss.name=margin,triplet")
        axes.append((key.strip(), choices))
    return axes


def sweep(
    presets: Annotated[list[str], typer.Argument(help="preset names or files, composed in order")],
    grid: Annotated[list[str], typer.Option("--grid", help="KEY=V1,V2,... ; repeatable, the runs are the product")],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE override for every run")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="seeds like 0-4; default: the preset's seeds")] = None,
    gpus: Annotated[str, typer.Option("--gpus", help="auto, cpu, or indices", callback=validate_gpus)] = "auto",
    tags: Annotated[list[str] | None, typer.Option("--tag", help="tag every run; repeatable")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate and list the runs, start nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the runs as JSON")] = False,
) -> None:
    """Launch the product of a parameter grid (times the seeds) as detached runs."""
    import itertools

    axes = parse_grid(grid)
    combos = [dict(zip([k for k, _ in axes], values, strict=True)) for values in itertools.product(*[v for _, v in axes])]
    library = home.preset_library()
    planned = []
    for combo in combos:  # validate everything before starting anything
        extra = [f"{k}={v}" for k, v in combo.items()]
        try:
            resolved = resolve(presets, [*(overrides or []), *extra], library=library)
        except ConfigError as error:
            fail(error.lines, ExitCode.NOT_FOUND if isinstance(error, PresetNotFound) else ExitCode.USAGE)
        seed_list = parse_seeds(seeds) if seeds else (resolved.seeds or [resolved.config.run.seed])
        label = "-".join(v for v in combo.values())
        planned += [(combo, extra, seed, label) for seed in seed_list]
    if dry_run:
        rows = [{"grid": combo, "seed": seed} for combo, _extra, seed, _label in planned]
        if as_json:
            print_json(rows)
        else:
            for row in rows:
                stdout.print(" ".join(f"{k}={v}" for k, v in row["grid"].items()) + f" seed={row['seed']}", highlight=False)
        return
    records = []
    for _combo, extra, seed, label in planned:
        records += launch(presets, [*(overrides or []), *extra], seeds=str(seed), gpus=gpus,
                          name=f"{presets[-1]}-{label}", tags=[*(tags or []), "sweep"])
    if as_json:
        print_json(records)
    else:
        for record in records:
            stdout.print(f"{record['id']}  {record['name']}  {record['state']}", highlight=False)
