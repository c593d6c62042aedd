"""``dmltui compare`` and ``dmltui report``: runs side by side, mean ± std over seeds, the paper's tables and figures."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from dmltui import compare as cmp
from dmltui import runs as run_ops
from dmltui import selection as sel
from dmltui.cli.common import ExitCode, fail, print_json, stdout
from dmltui.listing import matches, refreshed_runs
from dmltui.tune.study import TUNING_TAG


class Format(StrEnum):
    table = "table"
    csv = "csv"
    markdown = "markdown"
    latex = "latex"
    json = "json"


PresetOption = Annotated[str | None, typer.Option("--preset", help="only runs of this preset")]
TagOption = Annotated[str | None, typer.Option("--tag", help="only runs with this tag")]
DatasetOption = Annotated[str | None, typer.Option("--dataset", help="only runs on this dataset")]
WhereOption = Annotated[str | None, typer.Option("--where", help="only the runs this query selects, e.g. "
                                                              "'tags has sweep-lr and config.optim.lr < 1e-3' "
                                                              "(README: the query language)")]
GROUP_HELP = "preset, name (its -s<seed>/_s<seed> suffix removed) or a dotted config key such as loss.name"
# a plain string, checked by _selection: typer's own error for a bad choice is a box of several lines
SelectOption = Annotated[str | None, typer.Option(
    "--select", metavar="val|last|test-max",
    help="which epoch each run's values come from: val (the test metrics at the epoch of the best validation value), "
         "last (the last epoch) or test-max (each metric's maximum over the test epochs: the paper's protocol, "
         "optimistic); default: val where every run logged a validation split, else test-max")]


def _selection(records: list[dict], requested: str | None) -> tuple[str, str | None]:
    """The selection for *records* and the note of a default that fell back to test-max; exit 2 naming the problem
    when it cannot be made."""
    try:
        return sel.choose_selection(records, requested)
    except (sel.UnknownSelection, sel.NoValidationSplit) as error:
        fail(f"--select {requested}: {error}", ExitCode.USAGE)


def _find(run_id: str) -> dict:
    try:
        return run_ops.find(run_id)
    except (run_ops.RunNotFound, run_ops.AmbiguousRunId) as error:
        fail(str(error), ExitCode.NOT_FOUND)


def chosen_runs(run_ids: list[str] | None = None, where: str | None = None, *, preset: str | None = None,
                tag: str | None = None, dataset: str | None = None) -> list[dict]:
    """The runs a table or chart is about: the ids given (each once) or every stored run, narrowed by the --where
    query and the word filters. Without ids, a tag or a query, a study's fold runs are left out (they validate and have
    no test results). Exit 3 for an unknown id, 2 with one line for a bad query."""
    if run_ids:
        records = list({r["id"]: r for r in map(_find, run_ids)}.values())
    elif where is None:
        records = refreshed_runs()
        if not tag:
            records = [r for r in records if TUNING_TAG not in r.get("tags", ())]
    if where is not None:  # lark is imported by the commands that query, only
        from dmltui.query import QueryError, select

        try:
            records = select(records, where) if run_ids else refreshed_runs(where=where)
        except QueryError as error:
            fail(f"--where: {error}", ExitCode.USAGE)
    return [r for r in records if matches(r, preset=preset, tag=tag, dataset=dataset)]


def _print_table(table_rows: cmp.TableRows) -> None:
    """Numbers right-aligned, the selection as a footnote; piped output is never wrapped or cut to 80 columns (a
    terminal wraps cells)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Column, Table

    columns = [Column(header, justify="right" if c >= table_rows.lead else "left")
               for c, header in enumerate(table_rows.headers)]
    table = Table(*columns, box=None, pad_edge=False)
    for r, line in enumerate(table_rows.rows):
        table.add_row(*(f"[bold]{escape(cell)}[/]" if (r, c) in table_rows.bold else escape(cell)
                        for c, cell in enumerate(line)))
    console = stdout if stdout.is_terminal else Console(width=100_000)
    console.print(table)
    console.print(table_rows.note, highlight=False, markup=False)


def compare(
    run_ids: Annotated[list[str] | None, typer.Argument(help="run ids (or unique prefixes); optional with --group-by")] = None,
    group_by: Annotated[str | None, typer.Option("--group-by", help=f"mean ± std over groups of runs: {GROUP_HELP}")] = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", "-m", help="metric to show (e_recall@1, nmi, mAP_c...); "
                                                     "repeatable; default: the paper's that were logged")] = None,
    split: Annotated[str, typer.Option("--split", help="split of the best values: test, val or train")] = "test",
    select: SelectOption = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="output format")] = Format.table,
    all_states: Annotated[bool, typer.Option("--all-states", help="group unfinished runs too (default: finished only)")] = False,
    preset: PresetOption = None,
    tag: TagOption = None,
    dataset: DatasetOption = None,
    where: WhereOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="same as --format json")] = False,
) -> None:
    """Compare runs: the config keys that differ and each run's best metrics (with their epochs); with
    --group-by, mean ± std over each group's runs of every run's best values (std ddof=0). --select says which
    epoch "best" is; the table's footnote says which it was."""
    if as_json:
        fmt = Format.json
    if not run_ids and not group_by:
        fail("give run ids to compare, or --group-by to compare groups of runs", ExitCode.USAGE)
    records = chosen_runs(run_ids, where, preset=preset, tag=tag, dataset=dataset)
    if not records:
        fail("no runs match the filters" + (f" (--where {where!r})" if where is not None else ""), ExitCode.NOT_FOUND)
    if group_by:
        if not all_states:
            finished = [r for r in records if r.get("state") == "finished"]
            if len(finished) < len(records):
                print(f"note: left out {len(records) - len(finished)} unfinished run(s); --all-states includes them",
                      file=sys.stderr)
            if not finished:
                fail(f"none of the {len(records)} matching run(s) is finished (use --all-states)", ExitCode.NOT_FOUND)
            records = finished
    metrics = list(metric) if metric else cmp.default_metrics(records, split)
    if not metrics:
        splits = cmp.logged_splits(records)
        fail(f"these runs logged no metric on split {split!r}; splits with metrics: {', '.join(splits) or 'none'}",
             ExitCode.USAGE)
    selection, note = _selection(records, select)
    if note:
        print(f"note: {note}", file=sys.stderr)
    try:
        if group_by:
            rows = cmp.group_summary(records, group_by, metrics, split, include_unfinished=True, selection=selection)
        else:
            rows = cmp.comparison(records, metrics, split, selection)
    except (cmp.MetricNotLogged, cmp.UnknownGroupKey) as error:
        fail(str(error), ExitCode.USAGE)
    if fmt is Format.table:
        _print_table(cmp.to_table_rows(rows, metrics))
    elif fmt is Format.csv:
        sys.stdout.write(cmp.to_csv(rows, metrics))
    elif fmt is Format.markdown:
        sys.stdout.write(cmp.to_markdown(rows, metrics))
    elif fmt is Format.latex:
        sys.stdout.write(cmp.to_latex(rows, metrics))
    else:
        sys.stdout.write(cmp.to_json(rows))


def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the tables and figures")] = Path("dmltui-report"),
    group_by: Annotated[str, typer.Option("--group-by", help=GROUP_HELP)] = "preset",
    select: SelectOption = None,
    preset: PresetOption = None,
    tag: TagOption = None,
    dataset: DatasetOption = None,
    where: WhereOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """The paper's Result_Evaluations from the finished runs: per-dataset LaTeX and Markdown tables (R@1, R@2,
    F1, mAP, NMI, best epoch), R@1 against rho and the metric correlation matrix (PNG). --select test-max is the
    paper's protocol (for comparison with published numbers); each table's caption names its selection."""
    from dmltui.report import build_report  # deferred: matplotlib

    records = chosen_runs(None, where, preset=preset, tag=tag, dataset=dataset)
    finished = [r for r in records if r.get("state") == "finished"]
    if not finished:
        fail(f"no finished runs to report on ({len(records)} matching run(s), none finished)", ExitCode.NOT_FOUND)
    selection, _ = _selection(finished, select)  # refused before anything is written; the note is one of messages
    messages: list[str] = []
    try:
        paths = build_report(finished, out, group_by, messages=messages, selection=select)
    except cmp.UnknownGroupKey as error:
        fail(str(error), ExitCode.USAGE)
    for message in messages:
        print(f"note: {message}", file=sys.stderr)
    if as_json:
        print_json({"out": str(out), "files": [str(p) for p in paths], "skipped": messages, "selection": selection})
        return
    for path in paths:
        sys.stdout.write(f"{path}\n")
