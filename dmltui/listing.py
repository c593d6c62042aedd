"""Reading the store for display: refreshed records, filters and sorting (shared by ``runs list``, ``compare`` and the TUI)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from dmltui import runs as run_ops
from dmltui.store import RunStore

LIVE_STATES = ("queued", "running")


def refreshed_runs(store: RunStore | None = None) -> list[dict[str, Any]]:
    """Every stored run, live ones reconciled with their run directories, newest first."""
    with (store or run_ops.open_store()).transaction() as tx:  # one lock: one read, and one write when a live run changed
        records = [tx.modify(r["id"], run_ops.refresh) if r["state"] in LIVE_STATES else r  # only live runs can change
                   for r in tx.all()]
    return sorted(records, key=lambda r: r["created_at"], reverse=True)


def best_value(record: dict[str, Any], metric: str = "e_recall@1") -> float | None:
    """The run's best value of *metric* on val (when it has a val split) or test."""
    for split in ("val", "test"):
        entry = record.get("best", {}).get(f"{split}/{metric}")
        if entry:
            return entry["value"]
    return None


def matches(record: dict[str, Any], *, states: Iterable[str] | None = None, preset: str | None = None,
            tag: str | None = None, dataset: str | None = None, text: str | None = None) -> bool:
    haystack = " ".join([record["id"], record["name"], record.get("preset") or "", record.get("notes", ""),
                         record.get("dataset", ""), record.get("loss", ""), record.get("miner", ""),
                         *record.get("tags", [])]).lower()
    return (
        (not states or record["state"] in states)
        and (not preset or record.get("preset") == preset)
        and (not tag or tag in record.get("tags", []))
        and (not dataset or record["dataset"] == dataset)
        and (not text or all(word in haystack for word in text.lower().split()))
    )


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


def sort_value(record: dict[str, Any], field: str) -> Any:
    """A run field (created_at, name, state, epoch...), ``duration``, or else the best value of a metric; None when absent."""
    if field == "duration":
        return duration_seconds(record)
    if field in record and not isinstance(record[field], (dict, list)):
        return record[field]
    return best_value(record, field)


def sort_runs(records: Sequence[dict[str, Any]], field: str, *, descending: bool = True) -> list[dict[str, Any]]:
    """Sorted by *field*; runs without a value always come last."""
    present = [r for r in records if sort_value(r, field) is not None]
    missing = [r for r in records if sort_value(r, field) is None]
    return sorted(present, key=lambda r: sort_value(r, field), reverse=descending) + missing


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
