"""Reading the store for display: refreshed records, filters and sorting (shared by ``runs list``, ``compare`` and the TUI)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from dmltui import runs as run_ops
from dmltui.fields import value_getter
from dmltui.states import LIVE_STATES, is_final
from dmltui.store import RunStore


def refreshed_runs(store: RunStore | None = None, *, where: str | None = None) -> list[dict[str, Any]]:
    """Every stored run, those whose state can still change re-derived from their run directories, newest first;
    with *where*, only those that query selects (``dmltui.query``). A bad query raises QueryError before the
    transaction commits: nothing is written."""
    store = store or run_ops.open_store()
    refresh = run_ops.refresher(run_ops.queue_for(store.peek_live()))  # squeue: asked before the lock
    with store.transaction() as tx:  # one lock: one read, and one write when a run changed
        records = [r if is_final(r) else tx.modify(r["id"], refresh) for r in tx.all()]
        if where is not None:
            from dmltui.query import select  # lark: imported by the commands that query

            records = select(records, where)
    return sorted(records, key=lambda r: r["created_at"], reverse=True)


def best_value(record: dict[str, Any], metric: str = "e_recall@1") -> float | None:
    """The run's best value of *metric* on val (when it has a val split) or test."""
    for split in ("val", "test"):
        entry = record.get("best", {}).get(f"{split}/{metric}")
        if entry:
            return entry["value"]
    return None


# squeue's compact codes of the states a queued job shows most (squeue's ST column); others are written out
SQUEUE_CODES = {"PENDING": "PD", "RUNNING": "R", "CONFIGURING": "CF", "COMPLETING": "CG"}


def where_text(record: dict[str, Any]) -> str:
    """Where a run executes: ``local``, or its SLURM job as squeue's default columns show it (``123_4 PD (Resources)``,
    ``123_4 R node07``); a job that has left the queue shows its id alone."""
    if record.get("executor") != "slurm":
        return "local"
    words = [str(record.get("slurm_job_id") or "?")]
    state = record.get("slurm_state")
    if state:
        words.append(SQUEUE_CODES.get(state, state))
        detail = f"({record['slurm_reason']})" if state == "PENDING" and record.get("slurm_reason") else record.get("slurm_node")
        words += [detail] if detail else []
    return " ".join(words)


def on_slurm(records: Iterable[dict[str, Any]]) -> bool:
    """Whether any of the runs was submitted to SLURM (listings then say where each run executes)."""
    return any(record.get("executor") == "slurm" for record in records)


def search_text(record: dict[str, Any]) -> str:
    """What free-text filter words are looked for in: id, name, preset, notes, dataset, loss, miner and tags."""
    return " ".join([record["id"], record["name"], record.get("preset") or "", record.get("notes", ""),
                     record.get("dataset", ""), record.get("loss", ""), record.get("miner", ""),
                     *record.get("tags", [])]).lower()


def record_filter(*, states: Iterable[str] | None = None, preset: str | None = None, tag: str | None = None,
                  dataset: str | None = None, text: str | None = None,
                  text_of: Callable[[dict[str, Any]], str] = search_text) -> Callable[[dict[str, Any]], bool]:
    """A test of whether a run passes every given filter (*text*: words that must all appear in ``text_of(record)``;
    the TUI passes a cached :func:`search_text`, as it filters thousands of runs on every keystroke)."""
    states = set(states or ())
    words = text.lower().split() if text else []

    def passes(record: dict[str, Any]) -> bool:
        if (states and record["state"] not in states) or (preset and record.get("preset") != preset) \
                or (tag and tag not in record.get("tags", [])) or (dataset and record["dataset"] != dataset):
            return False
        if words:
            haystack = text_of(record)
            return all(word in haystack for word in words)
        return True

    return passes


def matches(record: dict[str, Any], **filters: Any) -> bool:
    """Whether the run passes every filter of :func:`record_filter`."""
    return record_filter(**filters)(record)


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def duration_seconds(record: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds from start to end (or to now while the run lives); None before it started."""
    start = parse_time(record.get("started_at"))
    end = parse_time(record.get("ended_at"))
    if end is None and record.get("state") in LIVE_STATES:
        end = now or datetime.now(UTC)
    if start is None or end is None:  # not started, or crashed without an end time
        return None
    return max(0.0, (end - start).total_seconds())


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d{hours % 24:02d}h"
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def sort_value(record: dict[str, Any], field: str) -> Any:
    """A run field (created_at, name, state, epoch...), ``duration``, a dotted field (``config.optim.lr``,
    ``best.test.e_recall@1``: :mod:`dmltui.fields`), or else the best value of a metric; None when absent."""
    if field == "duration":
        return duration_seconds(record)
    if field in record and not isinstance(record[field], (dict, list)):
        return record[field]
    if "." in field:  # config.KEY, best.SPLIT.METRIC, last.SPLIT.METRIC
        getter = value_getter(field)
        return getter(record) if getter else None
    return best_value(record, field)


def _orderable(value: Any) -> tuple[int, Any]:
    """Numbers before text before lists: a config key's values may be of several kinds across runs."""
    if isinstance(value, (int, float)):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, str(value))


def sort_runs(records: Sequence[dict[str, Any]], field: str, *, descending: bool = True) -> list[dict[str, Any]]:
    """Sorted by *field* (stable: ties keep their order); runs without a value always come last."""
    keyed = [(sort_value(r, field), r) for r in records]
    present = sorted((pair for pair in keyed if pair[0] is not None), key=lambda pair: _orderable(pair[0]),
                     reverse=descending)
    return [r for _, r in present] + [r for value, r in keyed if value is None]


FILTER_FIELDS = ("state", "tag", "dataset", "preset")


def parse_filter(text: str) -> dict[str, Any]:
    """A filter line such as ``state:running tag:paper margin`` as keyword arguments of :func:`matches`.

    ``state:`` may repeat (any of them matches) or list states with commas; other words are free text."""
    states: list[str] = []
    options: dict[str, Any] = {}
    words = []
    for word in text.split():
        key, sep, value = word.partition(":")
        if sep and key in FILTER_FIELDS and value:
            if key == "state":
                states += [s for s in value.split(",") if s]
            else:
                options[key] = value
        else:
            words.append(word)
    if states:
        options["states"] = states
    if words:
        options["text"] = " ".join(words)
    return options
