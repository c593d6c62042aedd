"""Saved views of the runs table: a name for a filter, columns, a sort and a grouping, kept in the user's config file
(``dmltui.home.config_path()``) as ``[views.NAME]`` tables, chosen in the TUI (``v``) and with ``--view NAME`` in
the CLI::

    [views.margin-lr]
    filter = "config.loss.name = margin and state = finished"
    columns = ["state", "name", "R@1", "config.optim.lr", "best.test.e_recall@1"]
    sort = "config.optim.lr"
    order = "asc"
    group_by = "config.optim.lr"

``filter`` is what the runs screen's filter box holds: a query (``dmltui.query``) or filter words (``margin
state:running tag:paper``). Empty ``columns`` are the listing's default ones.

The file is the user's: a save or a delete edits it with tomlkit (their comments and other tables stay as they
were), inside a file lock (two saves at once both land), written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmltui import home
from dmltui.columns import UnknownColumn, parse_columns

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
KEYS = ("filter", "columns", "sort", "order", "group_by")
ORDERS = {"desc": True, "asc": False}
LOCK_TIMEOUT = 10.0  # seconds a save waits for another one


class ViewError(ValueError):
    """A view that cannot be used or saved: one line naming the file and the key."""


class UnknownView(ViewError):
    """No saved view of that name."""


class ViewsBusy(ViewError):
    """Another process held the config file's lock for LOCK_TIMEOUT seconds."""


@dataclass(frozen=True)
class View:
    name: str
    filter: str = ""
    columns: tuple[str, ...] = ()
    sort: str = "created_at"
    descending: bool = True
    group_by: str | None = None

    def table(self) -> dict[str, Any]:
        """The view as its ``[views.NAME]`` table, keys at their defaults left out."""
        table: dict[str, Any] = {}
        if self.filter:
            table["filter"] = self.filter
        if self.columns:
            table["columns"] = list(self.columns)
        if self.sort != "created_at":
            table["sort"] = self.sort
        if not self.descending:
            table["order"] = "asc"
        if self.group_by:
            table["group_by"] = self.group_by
        return table


def shown_config_path() -> str:
    """The config file as messages name it (``~`` for the home directory)."""
    path = str(home.config_path())
    user = str(Path.home())
    return "~" + path[len(user):] if path.startswith(user + os.sep) else path


def check_view_name(name: str) -> str:
    """*name*, when it reads the same as a TOML key and as a shell word (``[views.NAME]``, ``--view NAME``): no
    spaces, quotes or glob characters to escape."""
    if not NAME.fullmatch(name):
        raise ViewError(f"view name {name!r}: use letters, digits, '-', '_' and '.' (at most 64, starting with a "
                        "letter or digit)")
    return name


class _AnyField(Collection[str]):
    """Every name is a field: a saved filter is checked for its syntax only (which fields exist depends on the runs)."""

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def check_filter(text: str) -> str:
    """A query filter that parses (filter words always do); ViewError otherwise."""
    from dmltui import query

    if query.looks_like_query(text):
        try:
            query.compile_query(text, _AnyField())
        except query.QueryError as error:
            raise ViewError(str(error)) from None
    return text


def view_of(name: str, table: Any) -> View:
    """The ``[views.NAME]`` table as a View; ViewError naming the key for a value it cannot use."""
    where = f"{shown_config_path()}: views.{name}"
    if not isinstance(table, dict):
        raise ViewError(f"{where}: expected a table of {', '.join(KEYS)}")
    try:
        check_view_name(name)
    except ViewError as error:
        raise ViewError(f"{where}: {error}") from None
    unknown = [key for key in table if key not in KEYS]
    if unknown:
        raise ViewError(f"{where}.{unknown[0]}: unknown key; a view has {', '.join(KEYS)}")
    _check_strings(where, table)
    try:
        check_filter(table.get("filter", ""))
    except ViewError as error:
        raise ViewError(f"{where}.filter: {error}") from None
    return View(name=name, filter=table.get("filter", ""), columns=_columns(where, table.get("columns", [])),
                sort=table.get("sort", "created_at"), descending=ORDERS[table.get("order", "desc")],
                group_by=table.get("group_by"))


def _check_strings(where: str, table: dict[str, Any]) -> None:
    """The string keys: a hand-edited ``sort = 3`` or ``order = "up"`` is named here, not met later as a traceback."""
    for key in ("filter", "sort", "order", "group_by"):
        if key in table and not (isinstance(table[key], str) and (key == "filter" or table[key].strip())):
            raise ViewError(f"{where}.{key}: expected {'a string' if key == 'filter' else 'a name'}, got {table[key]!r}")
    if table.get("order", "desc") not in ORDERS:
        raise ViewError(f"{where}.order: {table['order']!r}; expected asc or desc")


def _columns(where: str, columns: Any) -> tuple[str, ...]:
    """The column keys, each one known (a misspelt one is named with the nearest), in their order."""
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ViewError(f"{where}.columns: expected a list of column names, got {columns!r}")
    try:
        return tuple(parse_columns(columns)) if columns else ()
    except UnknownColumn as error:
        raise ViewError(f"{where}.columns: {error}") from None


def _tables() -> dict[str, Any]:
    """The config file's ``[views.NAME]`` tables as parsed; ViewError for a file that cannot be read."""
    try:
        config = home.user_config()
    except home.SettingError as error:
        raise ViewError(str(error)) from None
    tables = config.get("views", {})
    if not isinstance(tables, dict):
        raise ViewError(f"{shown_config_path()}: views: expected tables [views.NAME]")
    return tables


def load_views() -> dict[str, View]:
    """Every saved view by name, sorted; ViewError for the first one that cannot be used, or an unreadable file."""
    tables = _tables()
    return {name: view_of(name, tables[name]) for name in sorted(tables)}


def get_view(name: str) -> View:
    """The saved view *name* (checked alone: a mistake in another view does not stop this one); UnknownView naming
    the nearest saved ones, or all of them, when there is none."""
    tables = _tables()
    if name in tables:
        return view_of(name, tables[name])
    saved = sorted(tables)
    near = difflib.get_close_matches(name, saved, n=3)
    known = f"nearest: {', '.join(near)}" if near else (f"saved: {', '.join(saved)}" if saved else "none is saved yet")
    raise UnknownView(f"no view {name!r} in {shown_config_path()}; {known} (dmltui views save NAME ...)")


def _locked_edit(change: Callable[[Any], Any]) -> Any:
    """Read config.toml, apply *change* to its tomlkit document and write it back atomically, all under one file
    lock: two dmltui processes saving views at once would otherwise each write the file they read, and one view
    would be lost. A file that is not TOML is left as it is."""
    import tomlkit
    from filelock import FileLock, Timeout

    path = home.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT):
            try:
                document = tomlkit.parse(path.read_text()) if path.exists() else tomlkit.document()
            except (tomlkit.exceptions.TOMLKitError, UnicodeDecodeError) as error:
                raise ViewError(f"{shown_config_path()}: not valid TOML ({error}); fix it first, nothing was "
                                "changed") from None
            result = change(document)
            _atomic_write(path, tomlkit.dumps(document))
    except Timeout:
        raise ViewsBusy(f"{shown_config_path()}: another dmltui held its lock for {LOCK_TIMEOUT:g} s; nothing was "
                        "changed") from None
    return result


def _atomic_write(path: Path, text: str) -> None:
    """Temp file in the same directory, fsync, rename: a crash leaves the old file or the new one, never half of one.
    The file keeps its permissions (mkstemp's are 0600)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _views_table(document: Any) -> Any:
    """The document's ``views`` super-table, added when it has none; ViewError when ``views`` is something else."""
    import tomlkit
    from tomlkit.items import Table

    if "views" not in document:
        document.add("views", tomlkit.table(is_super_table=True))
    views = document["views"]
    if not isinstance(views, Table):
        raise ViewError(f"{shown_config_path()}: views: expected tables [views.NAME], not {type(views).__name__}; "
                        "nothing was changed")
    return views


def save_view(view: View) -> None:
    """Write *view* as ``[views.NAME]``, replacing one of that name. ViewError for a view that would not load back
    (the file is then unchanged)."""
    import tomlkit
    from tomlkit.items import Table

    view_of(view.name, view.table())  # the checks a load makes: what is saved reads back
    wanted = view.table()

    def change(document: Any) -> None:
        views = _views_table(document)
        if not isinstance(views.get(view.name), Table):
            table = tomlkit.table()
            table.update(wanted)
            views[view.name] = table
            return
        table = views[view.name]  # edited in place: the user's comments in it stay
        for key in [key for key in table if key not in wanted]:
            del table[key]
        for key, value in wanted.items():
            table[key] = value

    _locked_edit(change)


def delete_view(name: str) -> bool:
    """Remove ``[views.NAME]``; False when there was none (the file is then rewritten as it was)."""

    def change(document: Any) -> bool:
        views = document.get("views")
        if views is None or name not in views:
            return False
        del views[name]
        return True

    if not home.config_path().exists():
        return False
    return _locked_edit(change)
