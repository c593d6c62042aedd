"""``dmltui runs``: list, inspect, follow and manage recorded runs."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dmltui import runs as run_ops
from dmltui.cli.common import GPUS_HELP, ExitCode, checked_gpus, fail, print_fitted_table, print_json, stdout
from dmltui.listing import matches, on_slurm, refreshed_runs, sort_runs
from dmltui.results import display_name
from dmltui.states import STATE_COLOURS, is_final
from engine.rundir import RunDir

if TYPE_CHECKING:  # rich's tables are imported where a table is drawn: `runs list --json` never needs them
    from collections.abc import Callable

    from rich.table import Table

    from dmltui.columns import Column
    from dmltui.views import View

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
    view_name: Annotated[str | None, typer.Option("--view", help="a saved view (dmltui views): its filter, columns, sort and grouping; options given here override them (filters: both must pass)")] = None,
    sort: Annotated[str | None, typer.Option("--sort", help="a run field (created_at, name, state...), a metric (e_recall@1) or a dotted field (config.optim.lr)  [default: created_at]")] = None,
    ascending: Annotated[bool | None, typer.Option("--asc/--desc", help="ascending or descending order  [default: descending]")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="only the first N runs (after filtering and sorting)")] = None,
    fields: Annotated[str | None, typer.Option("--fields", help="the table's columns in this order, comma-separated (id, state, name, R@1, dataset, loss/miner, epoch, tags, ... or a field: config.optim.lr, best.test.e_recall@1, seed); with --json: the record's fields (id,state,best) or dotted fields")] = None,
    group_by: Annotated[str | None, typer.Option("--group-by", help="one row per group: preset, name (without its seed), a run field or a config key (config.optim.lr), with the mean ± std of the metric columns over its finished runs (a view's group_by too)")] = None,
    as_json: JsonOption = False,
) -> None:
    """List recorded runs with their state reconciled from the run directories; every filter given must pass."""
    view = _view(view_name) if view_name else None
    group_by = group_by or (view.group_by if view else None)
    # --fields is checked before the store is read: a typo costs nothing
    picked = _json_getters(fields) if as_json and fields and not group_by else None
    chosen = (None if as_json and not group_by else _columns(fields) if fields
              else list(view.columns) if view and view.columns else None)
    query, word_filters = _with_view_filter(view, where)
    records = [r for r in _queried_runs(query, _query_option(view, where)) if matches(r, **word_filters)
               and matches(r, states=state, preset=preset, tag=tag, dataset=dataset, text=text)]
    sort = sort or (view.sort if view else "created_at")
    descending = not ascending if ascending is not None else (view.descending if view else True)
    records = sort_runs(records, sort, descending=descending)[:limit]
    if group_by:
        _print_groups(records, group_by, chosen or ["R@1"], as_json=as_json)
        return
    if as_json:
        print_json([{name: get(r) for name, get in picked.items()} for r in records] if picked else records)
        return
    _print_runs(records, chosen)


def _print_runs(records: list[dict], chosen: list[str] | None) -> None:
    """The runs table: the *chosen* columns (their order is also what a narrow terminal keeps), else the default ones,
    which show the SLURM job's column only while a run is on SLURM and at 80 columns leave out tags first."""
    from dmltui.columns import CLI_DEFAULT, CLI_IMPORTANCE, columns

    keys = chosen or [key for key in CLI_DEFAULT if key != "where" or on_slurm(records)]
    shown = columns(keys)
    headers = _headers(shown)
    header = dict(zip(keys, headers, strict=True))
    importance = chosen or [key for key in CLI_IMPORTANCE if key in keys]
    styles = {header["state"]: [STATE_COLOURS.get(r["state"], "white") for r in records]} if "state" in header else None
    print_fitted_table(headers, [[c.text(r) for c in shown] for r in records], [header[k] for k in importance],
                       styles=styles)


def _print_groups(records: list[dict], group_by: str, keys: list[str], *, as_json: bool) -> None:
    """One row per group (dataset, the key's value): its runs, and the mean ± std of each metric column over its
    finished runs, as the runs screen's group rows show them (dmltui.workspace: compare --group-by's function)."""
    from dmltui.columns import columns
    from dmltui.compare import UnknownGroupKey
    from dmltui.workspace import group_statistics, make_groups

    shown = [c for c in columns(keys) if c.metric] or columns(["R@1"])
    try:
        groups = make_groups(records, group_by)
    except UnknownGroupKey as error:
        fail(f"--group-by: {error}", ExitCode.USAGE)
    statistics = group_statistics(groups, group_by, shown)
    if as_json:
        print_json([{"group": g.label, "group_by": group_by, "dataset": g.dataset, "runs": [r["id"] for r in g.runs],
                     "n": len(g.runs), "metrics": {c.key: _stat_json(statistics[g.id].get(c.key)) for c in shown}}
                    for g in groups])
        return

    def cell(entry: dict | None) -> str:
        if not entry or entry.get("mean") is None:
            return "-"
        return f"{entry['mean']:.4f} ± {entry['std']:.4f} (n={entry['n']})"

    headers = [group_by, "dataset", "runs", *_headers(shown)]
    rows = [[g.label, g.dataset, str(len(g.runs)), *(cell(statistics[g.id].get(c.key)) for c in shown)] for g in groups]
    print_fitted_table(headers, rows, headers)
    if groups:
        print("mean ± std (ddof=0) over each group's finished runs of the values in its runs' rows", file=sys.stderr)


def _stat_json(entry: dict | None) -> dict | None:
    return None if entry is None else {key: entry[key] for key in ("n", "mean", "std", "values")}


def _headers(shown: list[Column]) -> list[str]:
    """Built-in columns headed by their key, as this table always has been (``R@1``, not the TUI's ``best R@1``); a
    field by its short header (``optim.lr``) unless two columns would share it: a table tells columns by header."""
    from dmltui.columns import BUILTIN

    short = [c.key if c.key in BUILTIN else c.header for c in shown]
    return [h if short.count(h) == 1 else c.key for h, c in zip(short, shown, strict=True)]


def _view(name: str) -> View:
    """The saved view (exit 3 naming the saved ones for an unknown name, 2 for one that cannot be used)."""
    from dmltui.views import UnknownView, ViewError, get_view

    try:
        return get_view(name)
    except UnknownView as error:
        fail(f"--view: {error}", ExitCode.NOT_FOUND)
    except ViewError as error:
        fail(f"--view: {error}", ExitCode.USAGE)


def _with_view_filter(view: View | None, where: str | None) -> tuple[str | None, dict[str, Any]]:
    """The query to select with and the filter words' keyword arguments of matches: a view's query joined to --where
    as ``(view) and (where)`` (both must pass), its filter words kept apart from --where."""
    if not view or not view.filter:
        return where, {}
    from dmltui.listing import parse_filter
    from dmltui.query import looks_like_query

    if looks_like_query(view.filter):
        return (f"({view.filter}) and ({where})" if where else view.filter), {}
    return where, parse_filter(view.filter)


def _query_option(view: View | None, where: str | None) -> str:
    """What a bad query's message names: the option it came from."""
    from dmltui.query import looks_like_query

    from_view = bool(view and looks_like_query(view.filter))
    if from_view and where:
        return f"--view {view.name} and --where: ({view.filter}) and ({where})"
    return f"--view {view.name}: filter {view.filter!r}" if from_view else "--where"


def _columns(text: str) -> list[str]:
    """--fields as table columns; exit 2 naming the nearest for an unknown one."""
    from dmltui.columns import UnknownColumn, parse_columns

    try:
        return parse_columns(text)
    except UnknownColumn as error:
        fail(f"--fields: {error}", ExitCode.USAGE)


def _json_getters(text: str) -> dict[str, Callable[[dict], Any]]:
    """--fields with --json: the record's own fields as stored, and dotted fields (config.optim.lr) as their values."""
    wanted = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not wanted:
        fail(f"--fields: name at least one field of: {', '.join(RECORD_FIELDS)}", ExitCode.USAGE)
    return {name: _json_getter(name) for name in wanted}


def _json_getter(name: str) -> Callable[[dict], Any]:
    """A record field as stored (``best`` stays a dict), or a dotted field's plain value; exit 2 naming the nearest."""
    import difflib

    from dmltui.fields import value_getter

    if name in RECORD_FIELDS:
        return lambda record: record.get(name)
    getter = value_getter(name) if "." in name else None
    if getter is None:
        nearest = difflib.get_close_matches(name, RECORD_FIELDS, n=3, cutoff=0.6)
        fail(f"--fields: unknown field {name!r}; " + (f"nearest: {', '.join(nearest)}" if nearest else
             f"fields: {', '.join(RECORD_FIELDS)}, or config.KEY, best.SPLIT.METRIC, last.SPLIT.METRIC"), ExitCode.USAGE)
    return getter


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


def _queried_runs(where: str | None, option: str) -> list[dict]:
    """The refreshed runs that *where* selects (all without it); exit 2 with one line naming *option* for a bad
    query."""
    if where is None:
        return refreshed_runs()
    from dmltui.query import QueryError

    try:
        return refreshed_runs(where=where)
    except QueryError as error:
        fail(f"{option}: {error}", ExitCode.USAGE)


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
