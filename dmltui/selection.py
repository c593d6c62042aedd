"""Which epoch of a run a "best" number comes from, and how to say so.

Every best value that ``compare``, ``report`` and the TUI show is one of three selections:

* ``val``: every metric of the reported split (test) at the one epoch where the run's validation
  split scored best on its selection metric: its first ``eval.storage_metrics`` (what chose its
  ``best`` checkpoint), else R@1. Honest: nothing about the test split chose the epoch.
* ``last``: every metric at the run's last evaluated epoch. Honest too, and needs no validation split.
* ``test-max``: each metric's maximum over the epochs of the reported split, each at its own epoch:
  the 2020 paper's protocol (its Result_Evaluations takes nanmax over epochs per metric). It is model
  selection on the numbers it reports, so it is optimistic; it stays for comparison with published numbers.

The default is ``val`` where every run logged a validation split, else ``test-max`` for every run
(a table never mixes selections). Epoch 0, the untrained network, is never selected, as in the
trainer's checkpoint choice. Ties go to the earliest epoch, as in ``engine.rundir.best_metrics``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmltui.runs import config_value
from engine.io import read_jsonl
from engine.metric_names import display_name
from engine.rundir import best_metrics

SELECTIONS = ("val", "last", "test-max")
DEFAULT_SELECTOR = "e_recall@1"
VALIDATION_SPLIT = "val"


class UnknownSelection(ValueError):
    def __init__(self, value: str):
        super().__init__(f"selection {value!r} is not one of {', '.join(SELECTIONS)}")


class NoValidationSplit(ValueError):
    """``val`` was asked for, and some runs logged no validation value of their selection metric."""

    def __init__(self, runs: Sequence[dict[str, Any]]):
        self.runs = list(runs)
        shown = ", ".join(_run_name(r) for r in self.runs[:10]) + (f" and {len(self.runs) - 10} more"
                                                                  if len(self.runs) > 10 else "")
        super().__init__(f"selection 'val' needs a validation split, and {len(self.runs)} run(s) logged none "
                         f"(data.use_tv_split or data.folds): {shown}; use --select last or test-max")


def _run_name(record: dict[str, Any]) -> str:
    name, run_id = record.get("name"), record.get("id")
    return f"{name} ({run_id})" if name and run_id and name != run_id else str(name or run_id)


@dataclass(frozen=True)
class Selected:
    """One run's selected values on one split: ``metrics`` maps each scalar metric to ``{"value", "epoch"}``.

    ``epoch`` is the selected epoch (None for test-max, whose metrics each have their own, and when nothing was
    logged); ``selected_by`` is the ``val/<metric>`` that chose it, for ``val``."""

    selection: str
    split: str
    epoch: int | None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    selected_by: str | None = None


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _trained_evals(lines: Iterable[dict[str, Any]], split: str) -> dict[int, dict[str, Any]]:
    """{epoch >= 1: that epoch's metrics on *split*} (a later line of an epoch wins, as after a resume)."""
    return {line["epoch"]: line.get("metrics") or {} for line in lines
            if line.get("kind") == "eval" and line.get("split") == split and isinstance(line.get("epoch"), int)
            and line["epoch"] >= 1}


def _at_epoch(values: dict[str, Any], epoch: int) -> dict[str, dict[str, Any]]:
    return {name: {"value": value, "epoch": epoch} for name, value in values.items() if _scalar(value)}


def select_epoch(lines: Sequence[dict[str, Any]], selection: str, *, split: str = "test",
                 selector: str = DEFAULT_SELECTOR) -> Selected | None:
    """The *selection* of a run's metrics.jsonl *lines* on *split*; None for ``val`` when the validation split never
    logged *selector*. UnknownSelection for another selection."""
    if selection == "test-max":
        prefix = f"{split}/"
        chosen = {key[len(prefix):]: entry for key, entry in best_metrics(list(lines)).items() if key.startswith(prefix)}
        return Selected(selection, split, None, chosen)
    if selection == "last":
        evals = _trained_evals(lines, split)
        if not evals:
            return Selected(selection, split, None)
        last = max(evals)
        return Selected(selection, split, last, _at_epoch(evals[last], last))
    if selection == "val":
        scores = {epoch: values[selector] for epoch, values in _trained_evals(lines, VALIDATION_SPLIT).items()
                  if _scalar(values.get(selector))}
        if not scores:
            return None
        epoch = max(sorted(scores), key=lambda e: scores[e])  # max() keeps the first of equal scores: the earliest
        reported = _trained_evals(lines, split).get(epoch, {})
        return Selected(selection, split, epoch, _at_epoch(reported, epoch), f"{VALIDATION_SPLIT}/{selector}")
    raise UnknownSelection(selection)


# --------------------------------------------------------------------------- store records


def selector_of(record: dict[str, Any]) -> str:
    """The validation metric that selects the run's epoch: its first storage metric (the one that chose its best
    checkpoint), else R@1."""
    storage = config_value(record, "eval.storage_metrics", [])
    return storage[0] if storage else DEFAULT_SELECTOR


def has_validation(record: dict[str, Any]) -> bool:
    """Whether the run logged its selection metric on a validation split (read from the store's summary)."""
    return f"{VALIDATION_SPLIT}/{selector_of(record)}" in (record.get("best") or {})


def metrics_lines(run_dir: str | Path) -> tuple[dict[str, Any], ...]:
    """The run's metrics.jsonl, parsed once per (size, mtime): tables redraw often, and their runs rarely change."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        stat = path.stat()
    except OSError:
        return ()
    return _parsed_metrics(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=512)
def _parsed_metrics(path: str, mtime_ns: int, size: int) -> tuple[dict[str, Any], ...]:
    return tuple(read_jsonl(Path(path)))


def run_selection(record: dict[str, Any], selection: str, split: str = "test") -> Selected:
    """A stored run's selected values. ``test-max`` is the store's summary (``best``: ``engine.rundir.best_metrics``
    of the run's metrics.jsonl, no file read); ``val`` and ``last`` read the run's metrics.jsonl. NoValidationSplit
    for ``val`` on a run without one."""
    if selection == "test-max":
        prefix = f"{split}/"
        best = {key[len(prefix):]: {"value": entry["value"], "epoch": entry.get("epoch")}
                for key, entry in (record.get("best") or {}).items()
                if key.startswith(prefix) and _scalar((entry or {}).get("value"))}
        return Selected(selection, split, None, best)
    lines = metrics_lines(record["run_dir"]) if record.get("run_dir") else ()
    chosen = select_epoch(lines, selection, split=split, selector=selector_of(record))
    if chosen is None:
        raise NoValidationSplit([record])
    return chosen


def choose_selection(records: Sequence[dict[str, Any]], requested: str | None = None) -> tuple[str, str | None]:
    """The selection for a table of *records*, and a note when the default had to fall back.

    None asks for the default: ``val`` where every run logged a validation split, else ``test-max`` for all of them
    (with a note naming how many runs lack one, when some have one). ``val`` for runs of which some lack a
    validation split raises NoValidationSplit naming them; an unknown name raises UnknownSelection."""
    if requested is not None and requested not in SELECTIONS:
        raise UnknownSelection(requested)
    without = [r for r in records if not has_validation(r)]
    if requested == "val" and without:
        raise NoValidationSplit(without)
    if requested is not None:
        return requested, None
    if records and not without:
        return "val", None
    if len(without) < len(records):
        return "test-max", (f"{len(without)} of {len(records)} runs logged no validation split, so every run's best "
                            "is test-max (chosen on test: optimistic); --select last chooses without the test split")
    return "test-max", None


def selection_choices(records: Sequence[dict[str, Any]]) -> list[str]:
    """The selections a table of *records* can show: ``val`` only where every run has a validation split."""
    return [s for s in SELECTIONS if s != "val" or (records and all(has_validation(r) for r in records))]


# a few words per selection, where a screen has no room for describe()'s sentence
SHORT_LABELS = {"val": "best: val", "last": "best: last", "test-max": "best: test-max, optimistic"}


def describe(selection: str, split: str = "test", selected_by: Iterable[str | None] = ()) -> str:
    """How the values were chosen, in a table's footnote or caption."""
    if selection == "val":
        metrics = sorted({key.partition("/")[2] for key in selected_by if key}) or [DEFAULT_SELECTOR]
        names = " / ".join(display_name(m) for m in metrics)
        return (f"selection val: the {split} metrics at the epoch of each run's best validation {names} "
                "(nothing about the test split chose it)")
    if selection == "last":
        return f"selection last: the {split} metrics at each run's last evaluated epoch"
    if selection == "test-max":
        return (f"selection test-max: each {split} metric's maximum over the epochs, each at its own epoch (the 2020 "
                "paper's protocol; chosen on the numbers it reports, so optimistic)")
    raise UnknownSelection(selection)


def checkpoint_note(choice: dict[str, str] | None) -> str | None:
    """How a best checkpoint was chosen (``engine.embed.checkpoint_choice``), in words; None for other checkpoints."""
    if choice is None:
        return None
    chosen = f"chosen on the {choice['split']} split by its best {display_name(choice['metric'])}"
    if choice["split"] == "test":
        return f"{chosen}: the run had no validation split, so this is model selection on test data, which is optimistic"
    return chosen
