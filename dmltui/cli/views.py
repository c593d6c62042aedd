"""``dmltui views``: the saved views of the runs table (a filter, columns, a sort and a grouping under a name), kept
in the user's config file; ``runs list --view NAME`` and the runs screen's ``v`` show them."""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import typer

from dmltui.cli.common import ExitCode, fail, print_fitted_table, print_json
from dmltui.views import UnknownView, View, ViewError, ViewsBusy, delete_view, get_view, load_views, shown_config_path

app = typer.Typer(help="Saved views of the runs table (runs list --view NAME; v in the TUI).", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
NameArgument = Annotated[str, typer.Argument(help="the view's name")]


def _failed(error: ViewError) -> NoReturn:
    """Exit 3 for a view that is not saved, 4 when another process holds the file, 2 for a view (or a file) that
    cannot be used."""
    code = {UnknownView: ExitCode.NOT_FOUND, ViewsBusy: ExitCode.BUSY}.get(type(error), ExitCode.USAGE)
    fail(str(error), code)


def _as_json(view: View) -> dict:
    """The view as its config table spells it, every key present."""
    return {"name": view.name, "filter": view.filter, "columns": list(view.columns), "sort": view.sort,
            "order": "desc" if view.descending else "asc", "group_by": view.group_by}


@app.command("list")
def list_views(as_json: JsonOption = False) -> None:
    """The saved views: name, filter, columns, sort and grouping."""
    try:
        views = load_views()
    except ViewError as error:
        _failed(error)
    if as_json:
        print_json([_as_json(view) for view in views.values()])
        return
    if not views:
        print(f"no saved views in {shown_config_path()}: dmltui views save NAME --filter ... --fields ... "
              "(or v in the TUI)", file=sys.stderr)
        return
    rows = [[v.name, v.filter or "-", ",".join(v.columns) or "(default)", f"{v.sort} {'desc' if v.descending else 'asc'}",
             v.group_by or "-"] for v in views.values()]
    print_fitted_table(["name", "filter", "columns", "sort", "group by"], rows,
                       ["name", "filter", "group by", "sort", "columns"])


@app.command("show")
def show(name: NameArgument, as_json: JsonOption = False) -> None:
    """One saved view, key by key."""
    try:
        view = get_view(name)
    except ViewError as error:
        _failed(error)
    if as_json:
        print_json(_as_json(view))
        return
    for key, value in _as_json(view).items():
        text = ",".join(value) if isinstance(value, list) else value
        print(f"{key:>8}  {text or '-'}")


@app.command("save")
def save(
    name: NameArgument,
    filter_text: Annotated[str, typer.Option("--filter", help="a query (config.loss.name = margin) or filter words (margin state:finished tag:paper)")] = "",
    fields: Annotated[str | None, typer.Option("--fields", help="the columns, comma-separated: id, state, name, R@1, ..., or fields such as config.optim.lr, best.test.e_recall@1  [default: the listing's]")] = None,
    sort: Annotated[str, typer.Option("--sort", help="a run field, a metric (e_recall@1) or a dotted field (config.optim.lr)")] = "created_at",
    ascending: Annotated[bool, typer.Option("--asc", help="ascending order (default: descending)")] = False,
    group_by: Annotated[str | None, typer.Option("--group-by", help="group the rows (in the TUI): preset, name, a run field or a config key (config.optim.lr)")] = None,
) -> None:
    """Save (or replace) a view; everything is checked before the file is written."""
    from dmltui.columns import UnknownColumn, parse_columns
    from dmltui.views import check_filter, check_view_name, save_view

    try:
        check_view_name(name)
    except ViewError as error:
        fail(str(error), ExitCode.USAGE)
    try:
        check_filter(filter_text)
    except ViewError as error:
        fail(f"--filter: {error}", ExitCode.USAGE)
    try:
        columns = tuple(parse_columns(fields)) if fields is not None else ()
    except UnknownColumn as error:
        fail(f"--fields: {error}", ExitCode.USAGE)
    view = View(name=name, filter=filter_text, columns=columns, sort=sort, descending=not ascending, group_by=group_by)
    try:
        save_view(view)
    except ViewError as error:
        _failed(error)
    print(f"saved view {name} in {shown_config_path()}", file=sys.stderr)


@app.command("delete")
def delete(name: NameArgument) -> None:
    """Delete a saved view (exit 3 when there is none of that name)."""
    try:
        deleted = delete_view(name)
    except ViewError as error:
        _failed(error)
    if not deleted:
        fail(f"no view {name!r} in {shown_config_path()}", ExitCode.NOT_FOUND)
    print(f"deleted view {name} from {shown_config_path()}", file=sys.stderr)
