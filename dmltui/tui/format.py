"""How run fields read on screen: plain functions, so the widgets stay thin and this stays testable."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.text import Text
from textual.binding import Binding

from dmltui.columns import Column
from dmltui.listing import best_value, duration_seconds, duration_text, parse_time, where_text
from dmltui.states import STATE_COLOURS
from dmltui.workspace import Group

BAR_WIDTH = 8


def state_text(state: str) -> Text:
    return Text(state, style=f"bold {STATE_COLOURS.get(state, 'default')}")


def progress_text(epoch: int | None, epochs: int | None, width: int = BAR_WIDTH) -> Text:
    """``12/150 ▰▱▱▱▱▱▱▱``: completed epochs, planned epochs and a bar."""
    epoch = epoch or 0
    if not epochs:
        return Text(f"{epoch}/?")
    filled = round(width * min(epoch, epochs) / epochs)
    text = Text(f"{epoch:>{len(str(epochs))}}/{epochs} ")
    text.append("▰" * filled, style="green")
    text.append("▱" * (width - filled), style="dim")
    return text


def metric_text(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def started_text(record: dict[str, Any], now: datetime | None = None) -> str:
    """Today's runs by time of day, older ones by date (local time)."""
    moment = parse_time(record.get("started_at") or record.get("created_at"))
    if moment is None:
        return "-"
    now = now or datetime.now(UTC)
    local = moment.astimezone()
    return local.strftime("%H:%M:%S") if local.date() == now.astimezone().date() else local.strftime("%Y-%m-%d")


def where_cell(record: dict[str, Any]) -> Text:
    """:func:`dmltui.listing.where_text` for the runs table: ``local`` dimmed, a job cut with an ellipsis."""
    return Text(where_text(record), style="dim" if record.get("executor") != "slurm" else "", no_wrap=True,
                overflow="ellipsis")


def job_text(record: dict[str, Any]) -> Text:
    """A SLURM run's job in words, for the run screen: ``slurm job 123_4: PENDING (Resources)``, ``…: RUNNING on
    node07``, or ``…: not in the queue`` once it has left it."""
    text = Text(f"slurm job {record.get('slurm_job_id') or '?'}: ")
    state, reason, node = record.get("slurm_state"), record.get("slurm_reason"), record.get("slurm_node")
    if not state:
        return text.append("not in the queue", style="dim")
    text.append(state, style=f"bold {STATE_COLOURS['queued']}" if state == "PENDING" else "bold")
    if state == "PENDING" and reason:
        text.append(f" ({reason})")
    elif node:
        text.append(f" on {node}")
    return text


MARK = "mark"  # the selection mark's column, first in every runs table


def _run_cell(col: Column, record: dict[str, Any], now: datetime | None) -> Any:
    """One cell of a run's row: the built-in columns styled (state colours, a progress bar), the others plain."""
    key = col.key
    if key == "state":
        return state_text(record["state"])
    if key == "where":
        return where_cell(record)
    if key == "epoch":
        return progress_text(record.get("epoch"), record.get("epochs"))
    if key == "R@1":
        return Text(metric_text(best_value(record)), justify="right")
    if key == "started":
        return started_text(record, now)
    if key == "time":
        return duration_text(duration_seconds(record, now))
    text = col.text(record)
    return Text(text, justify="right") if col.numeric else text


def run_cells(record: dict[str, Any], columns: Sequence[Column], *, selected: bool = False,
              now: datetime | None = None) -> dict[str, Any]:
    """The runs table's cells of one run, keyed by column."""
    cells = {col.key: _run_cell(col, record, now) for col in columns}
    cells[MARK] = Text("●", style="bold cyan") if selected else Text(" ")
    return cells


def stat_text(entry: dict[str, Any] | None, runs: int) -> Text:
    """A group's metric cell: ``0.6123±0.0100`` (the mean ± std of compare --group-by), with ``n=3`` when fewer of
    its runs than the group's count went into it (only finished runs do); ``…`` while being computed."""
    if entry is None or entry.get("mean") is None:
        return Text("-", justify="right")
    text = Text(f"{entry['mean']:.4f}±{entry['std']:.4f}", justify="right")
    if entry["n"] != runs:
        text.append(f" n={entry['n']}", style="dim")
    return text


def group_cells(group: Group, columns: Sequence[Column], *, expanded: bool, selected: int = 0) -> dict[str, Any]:
    """A group row's cells: its label and count, the mean ± std of each metric column, and for the other columns the
    value its runs share (``…`` where they differ)."""
    cells: dict[str, Any] = {MARK: Text("▾" if expanded else "▸", style="bold")}
    for col in columns:
        if col.key == "state":
            cells[col.key] = Text(f"{len(group.runs)} runs", style="dim")
        elif col.key == "name":
            cells[col.key] = Text(group.label + (f" ({selected} selected)" if selected else ""), style="bold")
        elif col.metric:
            cells[col.key] = stat_text((group.stats or {}).get(col.key), len(group.runs)) if group.stats is not None \
                else Text("…", justify="right", style="dim")
        elif col.key in ("epoch", "started", "time", "where", "id"):
            cells[col.key] = ""
        else:
            cells[col.key] = group.common_text(col)
    return cells


TAB_KEYS = Binding.Group("Tabs", compact=True)  # the footer shows "12345 Tabs" once instead of five hints


def tab_bindings(tabs: dict[str, str]) -> list[Binding]:
    """Keys 1..n show the tabs of a screen; *tabs* maps tab id -> label such as "1 Metrics"."""
    return [Binding(str(n), f"show_tab('{tab}')", label.split()[1], group=TAB_KEYS, tooltip=f"Show the {label.split()[1]} tab")
            for n, (tab, label) in enumerate(tabs.items(), start=1)]
