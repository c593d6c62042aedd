"""How run fields read on screen: plain functions, so the widgets stay thin and this stays testable."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from rich.text import Text
from textual.binding import Binding

from dmltui.listing import best_value, duration_seconds, on_slurm, parse_time, where_text
from dmltui.states import STATE_COLOURS

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


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d{hours % 24:02d}h"
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


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


def run_cells(record: dict[str, Any], *, selected: bool = False, now: datetime | None = None) -> dict[str, Any]:
    """The runs table's cells of one run, keyed by column."""
    return {
        "mark": Text("●", style="bold cyan") if selected else Text(" "),
        "state": state_text(record["state"]),
        "where": where_cell(record),
        "name": record["name"],
        "preset": record.get("preset") or "-",
        "dataset": record.get("dataset") or "-",
        "method": f"{record.get('loss', '?')}/{record.get('miner', '?')}",
        "epoch": progress_text(record.get("epoch"), record.get("epochs")),
        "r_at_1": Text(metric_text(best_value(record)), justify="right"),
        "started": started_text(record, now),
        "duration": duration_text(duration_seconds(record, now)),
    }


# column key -> (header, the run field or metric that sorts it, fixed width for cells that change while a run lives
# (re-measuring a column re-lays out the whole table: too costly every second), None: sized to its content);
# the most useful first, for 80 columns; "where" only while some run is on SLURM (see shown_columns)
RUN_COLUMNS = {
    "mark": (" ", None, 1),
    "state": ("state", "state", 8),
    "where": ("where", None, 24),
    "name": ("name", "name", None),
    "epoch": ("epoch", "epoch", 16),
    "r_at_1": ("best R@1", "e_recall@1", 8),
    "dataset": ("dataset", "dataset", None),
    "method": ("loss/miner", "loss", None),
    "preset": ("preset", "preset", None),
    "started": ("started", "created_at", 10),
    "duration": ("time", "duration", 8),
}


def shown_columns(records: Iterable[dict[str, Any]]) -> list[str]:
    """The runs table's columns: every one of RUN_COLUMNS, less "where" when no run is on SLURM (runs on this machine
    alone need no column saying so)."""
    slurm = on_slurm(records)
    return [key for key in RUN_COLUMNS if key != "where" or slurm]


TAB_KEYS = Binding.Group("Tabs", compact=True)  # the footer shows "12345 Tabs" once instead of five hints


def tab_bindings(tabs: dict[str, str]) -> list[Binding]:
    """Keys 1..n show the tabs of a screen; *tabs* maps tab id -> label such as "1 Metrics"."""
    return [Binding(str(n), f"show_tab('{tab}')", label.split()[1], group=TAB_KEYS, tooltip=f"Show the {label.split()[1]} tab")
            for n, (tab, label) in enumerate(tabs.items(), start=1)]
