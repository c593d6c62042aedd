"""The columns of a runs table, for ``runs list``, the runs screen and saved views: the built-in ones by name, and any
field a query reads (``config.optim.lr``, ``best.test.e_recall@1``, ``last.val.map_at_r``, ``seed``...).

A column is named by its key (what ``--fields``, a view's ``columns`` and the TUI's picker use), reads a plain value
from a stored record, and sorts by a field of :func:`dmltui.listing.sort_value`. How a value reads on screen (colour,
a progress bar) is the TUI's affair (``dmltui.tui.format``); here it is plain text, as a pipe gets it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dmltui.fields import METRIC_PREFIXES, RUN_FIELDS, value_getter
from dmltui.listing import best_value, duration_seconds, duration_text, parse_time, where_text
from engine.metric_names import display_name


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    sort_field: str | None  # what sort_value sorts the column by; None: it does not sort
    # the TUI's fixed width for cells that change while a run lives (re-measuring a column re-lays out the whole
    # table: too costly every second); None: sized to its content
    width: int | None
    value: Callable[[dict[str, Any]], Any]  # the plain value (a number stays a number: JSON, sorting, group means)
    metric: tuple[str | None, str] | None = None  # (split, metric) a group row averages; split None: val else test
    numeric: bool = False  # right-aligned
    format: Callable[[Any], str] = lambda value: value_text(value)  # the value as a cell's plain text

    def text(self, record: dict[str, Any]) -> str:
        return self.format(self.value(record))


def value_text(value: Any) -> str:
    """A field's value as a table cell: ``-`` for none, 4 decimals for a fraction, ``1e-05`` for a small number."""
    if value is None or value == []:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}" if 0.001 <= abs(value) < 1000 or value == 0 else f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(value_text(v) for v in value)
    return str(value)


def _local_minute(moment: str | None) -> str:
    parsed = parse_time(moment)
    return "-" if parsed is None else parsed.astimezone().strftime("%Y-%m-%d %H:%M")


def _progress(record: dict[str, Any]) -> str:
    return f"{record.get('epoch') or 0}/{record.get('epochs') or '?'}"


BUILTIN = {column.key: column for column in (
    Column("id", "id", "id", None, lambda r: r["id"]),
    Column("state", "state", "state", 8, lambda r: r["state"]),
    Column("where", "where", None, 24, where_text),
    Column("name", "name", "name", None, lambda r: r["name"]),
    Column("epoch", "epoch", "epoch", 16, _progress),
    Column("R@1", "best R@1", "e_recall@1", 8, best_value, metric=(None, "e_recall@1"), numeric=True),
    Column("dataset", "dataset", "dataset", None, lambda r: r.get("dataset") or "-"),
    Column("loss/miner", "loss/miner", "loss", None, lambda r: f"{r.get('loss', '?')}/{r.get('miner', '?')}"),
    Column("preset", "preset", "preset", None, lambda r: r.get("preset") or "-"),
    Column("started", "started", "created_at", 10, lambda r: r.get("started_at") or r.get("created_at"),
           format=_local_minute),
    Column("time", "time", "duration", 8, duration_seconds, numeric=True, format=duration_text),
    Column("tags", "tags", None, None, lambda r: r.get("tags") or [], format=",".join),
    Column("notes", "notes", "notes", None, lambda r: r.get("notes") or ""),
)}

# what each listing shows when no view or --fields chooses: "where" only while a run is on SLURM
TUI_DEFAULT = ("state", "where", "name", "epoch", "R@1", "dataset", "loss/miner", "preset", "started", "time")
CLI_DEFAULT = ("id", "name", "state", "where", "dataset", "loss/miner", "epoch", "R@1", "tags")
# at 80 columns the CLI leaves out the last of these first
CLI_IMPORTANCE = ("id", "state", "name", "R@1", "dataset", "epoch", "where", "loss/miner", "tags")


class UnknownColumn(ValueError):
    """A column name that is neither built in nor a field (the message names the nearest ones)."""


def field_header(key: str) -> str:
    """A field column's header: ``optim.lr`` for ``config.optim.lr``, ``best test R@1`` for ``best.test.e_recall@1``."""
    prefix, _, rest = key.partition(".")
    if prefix == "config":
        return rest
    split, _, metric = rest.partition(".")
    if prefix in METRIC_PREFIXES and metric:
        return f"{prefix} {split} {display_name(metric)}"
    return key


def column(key: str) -> Column:
    """The column named *key*; UnknownColumn for a name that is neither built in nor a field."""
    if key in BUILTIN:
        return BUILTIN[key]
    getter = value_getter(key)
    if getter is None:
        raise UnknownColumn(unknown_column(key, ()))
    prefix, _, rest = key.partition(".")
    metric = None
    if prefix == "best":
        split, _, name = rest.partition(".")
        metric = (split, name)
    numeric = prefix in METRIC_PREFIXES or key in ("seed", "epoch", "epochs")
    return Column(key, field_header(key), key, None, getter, metric=metric, numeric=numeric)


def columns(keys: Iterable[str]) -> list[Column]:
    return [column(key) for key in keys]


def unknown_column(key: str, fields: Iterable[str]) -> str:
    """``unknown column 'nme'; nearest: name``, the nearest among the built-in columns and *fields*."""
    known = [*BUILTIN, *(f for f in fields if f not in BUILTIN)]
    nearest = difflib.get_close_matches(key, known, n=4, cutoff=0.6)
    return (f"unknown column {key!r}; " + (f"nearest: {', '.join(nearest)}" if nearest else
            f"columns: {', '.join(BUILTIN)}, or a field ({', '.join(f for f in RUN_FIELDS if f not in BUILTIN)}, "
            "config.KEY, best.SPLIT.METRIC, last.SPLIT.METRIC)"))


def parse_columns(text: str | Sequence[str]) -> list[str]:
    """``id,name,config.optim.lr`` (or a list) as column keys, each checked; UnknownColumn naming a bad one."""
    keys = [k.strip() for k in text.split(",")] if isinstance(text, str) else [str(k).strip() for k in text]
    keys = [k for k in keys if k]
    if not keys:
        raise UnknownColumn(f"name at least one column: {', '.join(BUILTIN)}, or a field such as config.optim.lr")
    for key in keys:
        column(key)
    return list(dict.fromkeys(keys))

