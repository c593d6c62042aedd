"""The runs table as a workspace, apart from any widget: which columns, which rows (runs, or groups of runs that open
onto their runs), and the mean ± std a group row shows (``compare --group-by``'s numbers: the same function).

Groups are made from the store's summaries alone (a config key is read from ``config_changes``), so grouping
10,000 runs reads no file; the TUI computes their statistics in a worker all the same, as a table may hold many
metric columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dmltui.columns import TUI_DEFAULT, Column, column
from dmltui.compare import group_runs, group_summary, logged_metrics
from dmltui.listing import on_slurm, sort_runs
from dmltui.selection import has_validation

GROUP_PREFIX = "group:"  # a group row's key (run ids never start with it)


def table_columns(keys: Sequence[str] | None, records: Iterable[dict[str, Any]], *, grouped: bool = False) -> list[Column]:
    """The chosen columns, or by default TUI_DEFAULT less "where" when no run is on SLURM (runs on this machine
    alone need no column saying so). *grouped*: the metric columns are as wide as their groups' mean ± std."""
    if keys:
        chosen = [column(key) for key in keys]
    else:
        slurm = on_slurm(records)
        chosen = [column(key) for key in TUI_DEFAULT if key != "where" or slurm]
    return [replace(c, width=None) if grouped and c.metric else c for c in chosen]


@dataclass
class Group:
    """One group row: the runs sharing a dataset and a value of the group key."""

    dataset: str
    label: str
    runs: list[dict[str, Any]]
    # column key -> the group_summary entry of its metric ({"n", "mean", "std", ...}); None until computed
    stats: dict[str, dict[str, Any]] | None = None
    _common: dict[str, str] = field(default_factory=dict, repr=False)

    def common_text(self, col: Column) -> str:
        """The column's text where every run of the group shows the same, else ``…``."""
        if col.key not in self._common:
            first = col.value(self.runs[0])
            same = all(col.value(run) == first for run in self.runs)  # (stops at the first that differs)
            self._common[col.key] = col.format(first) if same else "…"
        return self._common[col.key]

    @property
    def id(self) -> str:
        return f"{GROUP_PREFIX}{self.dataset}\x1f{self.label}"



def row_id(row: dict[str, Any] | Group) -> str:
    """A table row's key: the run's id, or the group's."""
    return row.id if isinstance(row, Group) else row["id"]


def is_group_row(row_key: str | None) -> bool:
    return bool(row_key) and row_key.startswith(GROUP_PREFIX)


def make_groups(records: Sequence[dict[str, Any]], group_by: str) -> list[Group]:
    """The runs' groups under *group_by* (preset, name, a run field, or a config key as ``config.KEY`` or ``KEY``),
    per dataset, in compare's order; each group's runs keep the order of *records*. UnknownGroupKey for a key no
    run has."""
    if not records:
        return []
    return [Group(dataset, label, runs) for (dataset, label), runs in group_runs(records, group_by).items()]


def sort_groups(groups: list[Group], sort_field: str, columns: Sequence[Column], *, descending: bool) -> list[Group]:
    """Groups by the mean of the column sorted on when it is a metric (groups without one last), else by label."""
    metric_column = next((c for c in columns if c.metric and c.sort_field == sort_field), None)
    if metric_column is None or not any(g.stats for g in groups):
        return sorted(groups, key=lambda g: (g.dataset, _label_order(g.label)))

    def mean(group: Group) -> float | None:
        return ((group.stats or {}).get(metric_column.key) or {}).get("mean")

    present = sorted((g for g in groups if mean(g) is not None), key=mean, reverse=descending)
    return present + [g for g in groups if mean(g) is None]


def _label_order(label: str) -> tuple[int, float, str]:
    """Numbers in numeric order (1e-05 before 0.0001), before words."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def table_rows(records: Sequence[dict[str, Any]], groups: list[Group] | None, expanded: set[str], sort_field: str,
               *, descending: bool) -> list[Any]:
    """What the table shows, in order: the sorted runs, or each group followed by its runs (sorted) when expanded."""
    if groups is None:
        return list(records)
    rows: list[Any] = []
    for group in groups:
        rows.append(group)
        if group.id in expanded:
            rows += sort_runs(group.runs, sort_field, descending=descending)
    return rows


def group_statistics(groups: Sequence[Group], group_by: str, columns: Sequence[Column]) -> dict[str, dict[str, dict]]:
    """Per group id: column key -> the mean ± std (ddof=0) over the group's finished runs of the values its metric
    column shows in their rows, from ``compare --group-by``'s function: a run's best value of the metric on the
    column's split (``--select test-max --split SPLIT``; best R@1 reads val where every finished run has one, as
    its cells do, and test otherwise: a group's mean never mixes splits). So a group's cell is the mean of the cells under it. A metric no finished run logged has no entry.
    (group_summary reads only the summaries under test-max: no file.)"""
    runs = [run for group in groups for run in group.runs]
    finished = [run for run in runs if run.get("state") == "finished"]
    on_val = bool(finished) and all(has_validation(run) for run in finished)
    found: dict[str, dict[str, dict]] = {group.id: {} for group in groups}
    by_split: dict[str, dict[str, list[str]]] = {}  # split -> metric -> the column keys showing it
    for col in columns:
        if col.metric:
            split = col.metric[0] or ("val" if on_val else "test")
            by_split.setdefault(split, {}).setdefault(col.metric[1], []).append(col.key)
    for split, metrics in by_split.items():
        on_split = set(logged_metrics(finished, split))
        logged = [metric for metric in metrics if metric in on_split]
        if not logged:
            continue
        for row in group_summary(runs, group_by, logged, split, selection="test-max"):
            key = f"{GROUP_PREFIX}{row['dataset']}\x1f{row['group']}"
            for metric in logged:
                for column_key in metrics[metric]:
                    found[key][column_key] = row["metrics"][metric]
    return found
