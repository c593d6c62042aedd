"""``dmltui runs``: read the run store."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from dmltui import runs as run_ops
from dmltui.cli.common import ExitCode, fail, print_json, stdout

app = typer.Typer(help="Runs recorded in the store.", no_args_is_help=True)

STATE_STYLE = {"queued": "cyan", "running": "yellow", "finished": "green", "failed": "red", "crashed": "red",
               "stopped": "magenta", "diverged": "red"}


def _refreshed() -> list[dict]:
    store = run_ops.open_store()
    records = []
    for record in store.all():
        if record["state"] in ("queued", "running"):  # only live runs can have changed
            record = run_ops.reconcile(record["id"], store)
        records.append(record)
    return sorted(records, key=lambda r: r["created_at"], reverse=True)


def _best(record: dict, metric: str = "e_recall@1") -> float | None:
    for split in ("val", "test"):
        entry = record.get("best", {}).get(f"{split}/{metric}")
        if entry:
            return entry["value"]
    return None


@app.command("list")
def list_runs(as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """List recorded runs, newest first, with their state reconciled from the run directories."""
    records = _refreshed()
    if as_json:
        print_json(records)
        return
    table = Table("id", "name", "state", "dataset", "loss/miner", "epoch", "best R@1", box=None, pad_edge=False)
    for r in records:
        best = _best(r)
        table.add_row(
            r["id"], r["name"], f"[{STATE_STYLE.get(r['state'], 'white')}]{r['state']}[/]", r["dataset"],
            f"{r['loss']}/{r['miner']}", f"{r.get('epoch') or 0}/{r.get('epochs') or '?'}",
            f"{best:.4f}" if best is not None else "-",
        )
    stdout.print(table)


@app.command("show")
def show(run_id: str, as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Show one run's summary (state, best metrics and their epochs, run directory)."""
    store = run_ops.open_store()
    if store.get(run_id) is None:
        fail(f"no run with id {run_id!r} in {store.path}", ExitCode.NOT_FOUND)
    record = run_ops.reconcile(run_id, store)
    if as_json:
        print_json(record)
        return
    for key in ("id", "name", "state", "preset", "dataset", "loss", "miner", "seed", "run_dir", "created_at",
                "started_at", "ended_at", "error"):
        if record.get(key) is not None:
            stdout.print(f"[bold]{key:>10}[/] {record[key]}", highlight=False)
    table = Table("metric", "best", "epoch", box=None, pad_edge=False)
    for key, entry in sorted(record.get("best", {}).items()):
        table.add_row(key, f"{entry['value']:.4f}", str(entry["epoch"]))
    stdout.print(table)
