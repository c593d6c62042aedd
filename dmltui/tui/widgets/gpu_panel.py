"""GPU panel: utilisation, memory and the run holding each GPU; hidden on machines without GPUs."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual import work
from textual.widgets import Static

from dmltui import gpus

POLL_SECONDS = 2.0


def gpu_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, expand=True, show_header=True, header_style="bold")
    for header, justify in (("gpu", "left"), ("name", "left"), ("util", "right"), ("memory", "right"), ("run", "left")):
        table.add_column(header, justify=justify, no_wrap=True)
    for row in rows:
        util = "-" if row["utilization_pct"] is None else f"{row['utilization_pct']}%"
        if row["memory_total_mb"] is None:
            memory = "-"
        elif row["memory_used_mb"] is None:
            memory = f"{row['memory_total_mb'] / 1024:.0f} GiB"
        else:
            memory = f"{row['memory_used_mb'] / 1024:.1f}/{row['memory_total_mb'] / 1024:.0f} GiB"
        holder = Text(", ".join(row["runs"]), style="yellow") if row["runs"] else Text("free", style="green")
        table.add_row(str(row["index"]), row["name"], util, memory, holder)
    return table


class GpuPanel(Static):
    """Polls NVML in a worker thread; stays hidden when the machine has no GPU."""

    def __init__(self, **kwargs: Any):
        super().__init__(id="gpus", **kwargs)
        self.display = False
        self.rows: list[dict[str, Any]] = []

    def on_mount(self) -> None:
        self.poll()

    @work(thread=True, exclusive=True, group="gpus", exit_on_error=False)
    def poll(self) -> None:
        rows = gpus.usage(self.app.monitor.live())
        self.app.call_from_thread(self.show_rows, rows)

    def show_rows(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.display = bool(rows)
        if rows:
            self.update(gpu_table(rows))
            if not getattr(self, "_timer", None):
                self._timer = self.set_interval(POLL_SECONDS, self.poll)
