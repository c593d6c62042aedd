"""The fields of a stored run that queries, columns and sorts read: run fields, ``config.KEY``, ``best.SPLIT.METRIC``
and ``last.SPLIT.METRIC`` (see :mod:`dmltui.query` for what each holds). Kept apart from the query parser so that
a table or a sort reads a field without importing lark."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from dmltui.config_summary import reference

TEXT_FIELDS = ("id", "name", "state", "preset", "dataset", "loss", "miner", "executor", "host", "created_at",
               "started_at", "ended_at", "notes")
NUMBER_FIELDS = ("seed", "epoch", "epochs")
LIST_FIELDS = ("tags",)
RUN_FIELDS = TEXT_FIELDS + NUMBER_FIELDS + LIST_FIELDS
METRIC_PREFIXES = ("best", "last")
_EMPTY: dict[str, Any] = {}



class KnownFields(Collection[str]):
    """The fields that at least one of *records* has a value for: every run field, and the ``config.``, ``best.``
    and ``last.`` fields their summaries hold. Membership is looked up per field, stopping at the first run that
    has it (a query names a few fields; thousands of runs share them); listing them all (for suggestions) reads
    every run once."""

    def __init__(self, records: Iterable[dict[str, Any]]):
        self.records = list(records)
        self._known: dict[str, bool] = {}

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name in RUN_FIELDS:
            return True
        if name not in self._known:
            getter = value_getter(name)
            self._known[name] = getter is not None and any(getter(record) is not None for record in self.records)
        return self._known[name]

    @functools.cached_property
    def _all(self) -> list[str]:
        """Every field, for suggestions: config keys are the reference's (once a run has config values) and those
        the runs changed, without looking at which keys some run's config lacks."""
        names = dict.fromkeys(RUN_FIELDS)
        with_reference = False  # the reference's keys, once a run has config values
        for record in self.records:
            changes = record.get("config_changes")
            if changes is not None:
                if not with_reference:
                    names.update(dict.fromkeys(f"config.{key}" for key in reference()))
                    with_reference = True
                names.update(dict.fromkeys(f"config.{key}" for key, value in changes.items() if value is not None))
            for prefix in METRIC_PREFIXES:
                names.update(dict.fromkeys(f"{prefix}.{key.replace('/', '.', 1)}" for key in record.get(prefix) or ()))
        return list(names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)


def value_getter(name: str) -> Callable[[dict[str, Any]], Any] | None:
    """A function reading the field's value from a store record (None: the run has no value), or None for a name
    that is no field."""
    if name == "executor":
        return lambda record: record.get("executor") or "local"  # local runs carry no executor field
    if name in LIST_FIELDS:
        return lambda record: record.get(name) or []
    if name in RUN_FIELDS:
        return lambda record: record.get(name)
    prefix, _, rest = name.partition(".")
    if prefix == "config" and rest:
        default = reference().get(rest)

        def config_value(record: dict[str, Any]) -> Any:
            changes = record.get("config_changes")
            return None if changes is None else changes.get(rest, default)  # None in the changes: the run lacks it

        return config_value
    split, _, metric = rest.partition(".")
    if prefix in METRIC_PREFIXES and split and metric:
        key = f"{split}/{metric}"
        if prefix == "best":
            def best_value(record: dict[str, Any]) -> Any:
                entry = (record.get("best") or _EMPTY).get(key)
                return None if entry is None else entry.get("value")

            return best_value
        return lambda record: (record.get("last") or _EMPTY).get(key)
    return None


def field_kind(name: str) -> str | None:
    """The fixed kind of a field's values ("text", "number", "list"), None where it varies (config keys)."""
    if name in TEXT_FIELDS:
        return "text"
    if name in LIST_FIELDS:
        return "list"
    if name in NUMBER_FIELDS or name.split(".", 1)[0] in METRIC_PREFIXES:
        return "number"
    return None


def unknown_field(name: str, fields: Iterable[str]) -> str:
    """``unknown field 'config.los.name'; nearest: config.loss.name, ...``, or what fields there are."""
    known = list(fields)
    nearest = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    message = f"unknown field {name!r}; " + (f"nearest: {', '.join(nearest)}" if nearest else
                                            f"fields: {', '.join(RUN_FIELDS)}, config.KEY, best.SPLIT.METRIC, last.SPLIT.METRIC")
    prefix = name.split(".", 1)[0]
    if prefix in ("config", "last") and not any(field.startswith(f"{prefix}.") for field in known):
        what = "config values" if prefix == "config" else "last metrics"
        message += f" (no stored run has {what}: runs recorded by an older dmltui get them from `dmltui db rebuild`)"
    return message
