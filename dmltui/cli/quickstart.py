"""``dmltui quickstart``: a first real run on the CPU, end to end."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from dmltui import home
from dmltui import runs as run_ops
from dmltui.cli.common import ExitCode, fail, print_json, stdout
from dmltui.results import before_after_rows, display_name, scalar_metric_names
from engine.rundir import RunDir

STATE_EXIT = {"finished": ExitCode.OK, "stopped": ExitCode.INTERRUPTED}


def quickstart(
    overrides: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE override, e.g. optim.epochs=5")] = None,
    preset: Annotated[str, typer.Option("--preset", help="preset to train")] = "quickstart",
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
) -> None:
    """Train the quickstart preset (embedded glyphs, small CNN, CPU) and compare it with raw pixels and the untrained network."""
    from rich.table import Table

    from engine.config.presets import ConfigError, PresetNotFound, resolve  # deferred: pydantic

    try:
        resolved = resolve(preset, overrides or [], library=home.preset_library())
    except PresetNotFound as error:
        fail(error.lines, ExitCode.NOT_FOUND)
    except ConfigError as error:
        fail(error.lines, ExitCode.USAGE)
    for warning in resolved.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    record = run_ops.prepare_run(resolved, name=preset)
    print(f"run {record['id']} -> {record['run_dir']}", file=sys.stderr)
    run_ops.run_foreground(record)
    record = run_ops.reconcile(record["id"])
    rows = before_after_rows(RunDir(record["run_dir"]).read_metrics())
    if as_json:
        print_json({"run": record["id"], "state": record["state"], "run_dir": record["run_dir"], "rows": rows})
    else:
        names = scalar_metric_names(rows)
        table = Table(title=f"{preset}: {record['dataset']} test classes (unseen in training)", box=None, pad_edge=False)
        table.add_column("embedding")
        table.add_column("epoch", justify="right")
        for name in names:
            table.add_column(display_name(name), justify="right")
        for row in rows:
            cells = [f"{row['metrics'][n]:.3f}" if isinstance(row["metrics"].get(n), (int, float)) else "-" for n in names]
            table.add_row(row["label"], "" if row["epoch"] is None else str(row["epoch"]), *cells)
        stdout.print(table)
        stdout.print(f"run {record['id']} {record['state']}; files in {record['run_dir']}", highlight=False)
    if record["state"] not in STATE_EXIT:
        fail(f"run {record['id']} ended {record['state']}: {record.get('error') or 'see train.log'}", ExitCode.FAILED)
    raise typer.Exit(int(STATE_EXIT[record["state"]]))
