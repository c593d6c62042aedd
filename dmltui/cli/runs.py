"""``dmltui runs``: list, inspect, follow and manage recorded runs."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dmltui import runs as run_ops
from dmltui.cli.common import GPUS_HELP, ExitCode, checked_gpus, fail, print_fitted_table, print_json, stdout
from dmltui.listing import best_value, matches, on_slurm, refreshed_runs, sort_runs, where_text
from dmltui.results import display_name
from dmltui.states import STATE_COLOURS, is_final
from engine.rundir import RunDir

if TYPE_CHECKING:  # rich's tables are imported where a table is drawn: `runs list --json` never needs them
    from rich.table import Table

app = typer.Typer(help="Runs recorded in the store.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
IdArgument = Annotated[str, typer.Argument(help="run id (or a unique prefix of one)")]


def _get(run_id: str) -> dict:
    try:
        return run_ops.find(run_id)
    except (run_ops.RunNotFound, run_ops.AmbiguousRunId) as error:
        fail(str(error), ExitCode.NOT_FOUND)


@app.command("list")
def list_runs(
    state: Annotated[list[str] | None, typer.Option("--state", help="only runs in this state; repeatable")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="only runs of this preset")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="only runs with this tag")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="only runs on this dataset")] = None,
    text: Annotated[str | None, typer.Option("--text", help="words that must all appear in the id, name, preset, dataset, loss, miner, tags or notes")] = None,
    where: Annotated[str | None, typer.Option("--where", help="a query over run fields, config.KEY, best.SPLIT.METRIC and last.SPLIT.METRIC, e.g. 'state = finished and config.loss.name in (margin, triplet) and best.test.e_recall@1 >= 0.6' (README: the query language)")] = None,
    sort: Annotated[str, typer.Option("--sort", help="a run field (created_at, name, state...) or a metric (e_recall@1)")] = "created_at",
    ascending: Annotated[bool, typer.Option("--asc", help="ascending order")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="only the first N runs (after filtering and sorting)")] = None,
    fields: Annotated[str | None, typer.Option("--fields", help="with --json: only these fields of each run, comma-separated (e.g. id,state,best)")] = None,
    as_json: JsonOption = False,
) -> None:
    """List recorded runs with their state reconciled from the run directories; every filter given must pass."""
    wanted = _fields(fields) if fields else None
    records = [r for r in _queried_runs(where) if matches(r, states=state, preset=preset, tag=tag, dataset=dataset, text=text)]
    records = sort_runs(records, sort, descending=not ascending)[:limit]
    if as_json:
        print_json([{key: r.get(key) for key in wanted} for r in records] if wanted else records)
        return
    slurm = on_slurm(records)  # then a column says where each run executes: SLURM's job, state and reason or node
    headers = ["id", "name", "state", *(["where"] if slurm else []), "dataset", "loss/miner", "epoch", "R@1", "tags"]
    rows = []
    for r in records:
        best = best_value(r)
        rows.append([r["id"], r["name"], r["state"], *([where_text(r)] if slurm else []), r["dataset"],
                     f"{r['loss']}/{r['miner']}", f"{r.get('epoch') or 0}/{r.get('epochs') or '?'}",
                     f"{best:.4f}" if best is not None else "-", ",".join(r.get("tags", []))])
    # at 80 columns the least important go first: tags, then loss/miner, the SLURM job, epoch, dataset
    print_fitted_table(headers, rows, ["id", "state", "name", "R@1", "dataset", "epoch", "where", "loss/miner", "tags"],
                       styles={"state": [STATE_COLOURS.get(r["state"], "white") for r in records]})


@app.command("show")
def show(run_id: IdArgument, as_json: JsonOption = False) -> None:
    """One run's summary: state, configuration source, best metrics and their epochs, run directory."""
    record = _get(run_id)
    if as_json:
        print_json({**record, "config": run_ops.load_config(record)})  # the store keeps no configs: the run dir's
        return
    from rich.table import Table

    for key in ("id", "name", "state", "preset", "dataset", "loss", "miner", "seed", "tags", "notes", "run_dir",
                "created_at", "started_at", "ended_at", "error"):
        if record.get(key) not in (None, "", []):
            stdout.print(f"[bold]{key:>10}[/] {record[key]}", highlight=False)
    table = Table("metric", "best", "epoch", box=None, pad_edge=False)
    for key, entry in sorted(record.get("best", {}).items()):
        table.add_row(key, f"{entry['value']:.4f}", str(entry["epoch"]))
    stdout.print(table)


RECORD_FIELDS = ("id", "name", "state", "preset", "presets", "dataset", "loss", "miner", "seed", "tags", "notes", "created_at",
                 "started_at", "ended_at", "epoch", "epochs", "best", "last", "config_changes", "error", "gpus", "run_dir",
                 "host", "pid", "executor", "slurm_job_id", "slurm_state", "slurm_reason", "slurm_node")


def _queried_runs(where: str | None) -> list[dict]:
    """The refreshed runs that --where selects (all without it); exit 2 with one line for a bad query."""
    if where is None:
        return refreshed_runs()
    from dmltui.query import QueryError

    try:
        return refreshed_runs(where=where)
    except QueryError as error:
        fail(f"--where: {error}", ExitCode.USAGE)


def _fields(text: str) -> list[str]:
    """--fields as a list; exit 2 naming an unknown field and the allowed ones."""
    wanted = [name.strip() for name in text.split(",") if name.strip()]
    for name in wanted:
        if name not in RECORD_FIELDS:
            fail(f"--fields: unknown field {name!r}; fields: {', '.join(RECORD_FIELDS)}", ExitCode.USAGE)
    if not wanted:
        fail(f"--fields: name at least one field of: {', '.join(RECORD_FIELDS)}", ExitCode.USAGE)
    return wanted


def _latest_table(records: list[dict]) -> Table:
    from rich.table import Column, Table

    table = Table(Column("id", no_wrap=True, min_width=20), "name", "state", "epoch", "loss", "test metrics", box=None,
                  pad_edge=False)
    for record in records:
        metrics = RunDir(record["run_dir"]).read_metrics()
        train = [m for m in metrics if m.get("kind") == "train"]
        evals = [m for m in metrics if m.get("kind") == "eval" and m.get("split") in ("val", "test")]
        values = evals[-1]["metrics"] if evals else {}
        shown = " ".join(f"{display_name(k)} {v:.3f}" for k, v in values.items() if isinstance(v, float))
        table.add_row(record["id"], record["name"], f"[{STATE_COLOURS.get(record['state'], 'white')}]{record['state']}[/]",
                      f"{record.get('epoch') or 0}/{record.get('epochs') or '?'}",
                      f"{train[-1]['metrics']['loss']:.4f}" if train else "-", shown or "-")
    return table


def follow_runs(run_ids: list[str], *, interval: float = 1.0) -> int:
    """Live table of the runs' latest metrics until every one has ended; 0 when all finished."""
    from rich.live import Live

    store = run_ops.open_store()
    with Live(console=stdout, refresh_per_second=2, transient=False) as live:
        while True:
            records = run_ops.reconcile_many(run_ids, store)
            live.update(_latest_table(records))
            if all(is_final(r) for r in records):
                break
            time.sleep(interval)
    return int(ExitCode.OK) if all(r["state"] == "finished" for r in records) else int(ExitCode.FAILED)


@app.command("tail")
def tail(run_id: IdArgument, as_json: Annotated[bool, typer.Option("--json", help="JSON lines as they arrive")] = False) -> None:
    """Print the run's metric records as they arrive, until the run ends."""
    record = _get(run_id)
    if not as_json:
        raise typer.Exit(follow_runs([record["id"]]))
    from dmltui.monitor import metrics_tail

    tail = metrics_tail(record["run_dir"])  # the TUI's reader: only appended lines are read
    while True:
        ended = is_final(record)  # read once more after the end: nothing is missed
        lines, _replaced = tail.read()
        for line in lines:
            sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
        sys.stdout.flush()
        if ended:
            break
        time.sleep(0.5)
        record = run_ops.reconcile(record["id"])
    raise typer.Exit(int(ExitCode.OK) if record["state"] == "finished" else int(ExitCode.FAILED))


def _apply(operation, *args, **kwargs) -> Any:
    """A run operation; a run in the wrong state exits 1, one that vanished meanwhile 3, bad input (a tag) 2."""
    try:
        return operation(*args, **kwargs)
    except run_ops.RunError as error:
        fail(str(error), ExitCode.FAILED)
    except (run_ops.RunNotFound, run_ops.AmbiguousRunId) as error:
        fail(str(error), ExitCode.NOT_FOUND)
    except ValueError as error:
        fail(str(error), ExitCode.USAGE)


@app.command("stop")
def stop(
    run_ids: Annotated[list[str], typer.Argument(help="run ids")],
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait after SIGTERM before SIGKILL")] = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Stop runs: SIGTERM (the engine writes a checkpoint and ends 'stopped'), SIGKILL after the timeout."""
    stopped = [_apply(run_ops.stop, _get(run_id), timeout=timeout) for run_id in run_ids]
    if as_json:
        print_json(stopped)
    for record in stopped if not as_json else []:
        stdout.print(f"{record['id']} {record['state']}", highlight=False)


@app.command("resume")
def resume(
    run_id: IdArgument,
    gpus: Annotated[str | None, typer.Option("--gpus", help=GPUS_HELP)] = None,
    as_json: JsonOption = False,
) -> None:
    """Continue a stopped, crashed or failed run from its last checkpoint (detached)."""
    gpus = checked_gpus(gpus)
    record = _apply(run_ops.resume, _get(run_id), gpus=gpus)
    print_json(record) if as_json else stdout.print(f"{record['id']} {record['state']}", highlight=False)


@app.command("rerun")
def rerun(
    run_id: IdArgument,
    gpus: Annotated[str | None, typer.Option("--gpus", help=GPUS_HELP)] = None,
    name: Annotated[str | None, typer.Option("--name", help="name of the new run")] = None,
    as_json: JsonOption = False,
) -> None:
    """Start a new run with the same resolved configuration."""
    gpus = checked_gpus(gpus)
    record = _apply(run_ops.rerun, _get(run_id), name=name, gpus=gpus)
    print_json(record) if as_json else stdout.print(f"{record['id']} {record['name']} {record['state']}", highlight=False)


@app.command("rm")
def remove(
    run_ids: Annotated[list[str], typer.Argument(help="run ids")],
    keep_files: Annotated[bool, typer.Option("--keep-files", help="forget the runs but keep their directories")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete runs from the store and (unless --keep-files) their run directories."""
    records = [_get(run_id) for run_id in run_ids]
    what = "forget" if keep_files else "delete (with their run directories)"
    if not yes and not typer.confirm(f"{what} {len(records)} run(s): {', '.join(r['id'] for r in records)}?"):
        raise typer.Exit(int(ExitCode.FAILED))
    for record in records:
        _apply(run_ops.remove, record, keep_files=keep_files)
        print(f"removed {record['id']}", file=sys.stderr)


@app.command("tag")
def tag(
    run_id: IdArgument,
    tags: Annotated[list[str], typer.Argument(help="tags to add")],
    remove_tags: Annotated[bool, typer.Option("--remove", help="remove these tags instead")] = False,
) -> None:
    """Add (or with --remove, remove) tags."""
    record = _apply(run_ops.annotate, _get(run_id), add_tags=[] if remove_tags else tags,
                    remove_tags=tags if remove_tags else [])
    stdout.print(f"{record['id']} tags: {', '.join(record['tags']) or '-'}", highlight=False)


@app.command("note")
def note(run_id: IdArgument, text: Annotated[str, typer.Argument(help="the note (replaces the previous one)")]) -> None:
    """Attach a free-text note to a run."""
    _apply(run_ops.annotate, _get(run_id), notes=text)
