"""A study on disk: ``<dmltui home>/studies/<name>/`` holds Optuna's journal (the study, its trials and the spec
that made it) and ``summary.json``, a cache of what ``tune status`` shows, kept valid by the journal's size and mtime.

The spec is kept in the study's user attributes, so the journal alone is enough to continue a study. The fold runs
are ordinary runs, found in the store by their tags ``study:<name>``, ``trial:<n>`` and ``fold:<k>``.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from dmltui import home
from engine.io import atomic_write_bytes

SPEC_ATTR = "dmltui_spec"
FINAL_ATTR = "final_runs"
FINAL_EPOCHS_ATTR = "final_epochs"  # {"epochs", "rule"}: how many epochs the finalized runs train, and why
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TUNING_TAG = "tuning"  # every fold run of a search; they have no test metrics, and tables of test results skip them


class StudyError(ValueError):
    """A study that cannot be made, found or continued; the message is one line."""


class StudyBusy(StudyError):
    """Another tuner process holds the study."""


@dataclass
class StudySpec:
    """What a study searches and how: fixed when the study is created, checked when it is continued."""

    name: str
    presets: list[str]
    dataset: str
    space: list[str]
    trials: int
    folds: int = 4
    metric: str = "map_at_r"
    sampler: str = "tpe"
    pruner: str = "median"
    prune_startup: int = 5  # finished trials before the pruner may prune
    prune_warmup: int = 0  # epochs of a trial that are never pruned
    seed: int = 0  # the sampler's, and the fold runs' run.seed
    overrides: list[str] = field(default_factory=list)

    # what changing would make a different study (parallelism and the target are how it runs, not what it is)
    IDENTITY = ("presets", "dataset", "space", "folds", "metric", "overrides")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudySpec:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def differences(self, other: StudySpec) -> list[str]:
        return [key for key in self.IDENTITY if getattr(self, key) != getattr(other, key)]


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise StudyError(f"study name {name!r}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def studies_dir() -> Path:
    return home.home() / "studies"


def study_dir(name: str) -> Path:
    return studies_dir() / check_name(name)


def journal_path(name: str) -> Path:
    return study_dir(name) / "journal.log"


def list_studies() -> list[str]:
    root = studies_dir()
    return sorted(p.name for p in root.iterdir() if (p / "journal.log").is_file()) if root.is_dir() else []


def storage(name: str):
    """Optuna's journal storage of the study (a file: it outlives the tuning process; appends are locked)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = journal_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def exists(name: str) -> bool:
    return journal_path(name).is_file()


def load(name: str, *, sampler=None, pruner=None):
    """The stored study; StudyError when there is none."""
    import optuna

    if not exists(name):
        known = list_studies()
        raise StudyError(f"no study {name!r}" + (f"; studies: {', '.join(known)}" if known else "; `dmltui tune PRESET DATASET` starts one"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage(name), sampler=sampler, pruner=pruner)


def spec_of(study) -> StudySpec:
    return StudySpec.from_dict(study.user_attrs[SPEC_ATTR])


# ------------------------------------------------------------------------------------------------ summary


def _trial_row(trial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value,
        "params": trial.params,
        "epochs_reported": len(trial.intermediate_values),
        "intermediate": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "runs": trial.user_attrs.get("runs", []),
        "reason": trial.user_attrs.get("reason"),
        "started_at": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "ended_at": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
    }


def summarize(study) -> dict[str, Any]:
    """Everything ``tune status`` and the Studies view show: the spec, one row per trial, counts, the best trial, the
    best value after each trial (the best-so-far curve), the finalized runs' ids and their epoch count with its rule."""
    spec = spec_of(study)
    trials = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    counts = {state: sum(t["state"] == state for t in trials) for state in ("complete", "pruned", "running", "fail")}
    best, best_so_far, running_best = None, [], -math.inf
    for row in trials:
        if row["state"] == "complete" and row["value"] is not None:
            if row["value"] > running_best:
                running_best, best = row["value"], row
        best_so_far.append(running_best if best is not None else None)
    return {
        "name": spec.name,
        "spec": spec.to_dict(),
        "trials": trials,
        "counts": {**counts, "total": len(trials), "requested": spec.trials},
        "best": best,
        "best_so_far": best_so_far,
        "final_runs": study.user_attrs.get(FINAL_ATTR, []),
        "final_epochs": study.user_attrs.get(FINAL_EPOCHS_ATTR),
    }


def _journal_key(name: str) -> list[int] | None:
    try:
        stat = journal_path(name).stat()
    except FileNotFoundError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def write_summary(name: str, summary: dict[str, Any], key: list[int] | None) -> None:
    """Atomically cache *summary*, valid while the journal keeps *key*."""
    atomic_write_bytes(study_dir(name) / "summary.json", orjson.dumps({"journal": key, "summary": summary}))


def read_summary(name: str) -> dict[str, Any]:
    """The study's summary: from the cache when the journal has not changed since, else from the journal (through
    Optuna), cached again. A 500-trial study reads in milliseconds from the cache."""
    key = _journal_key(name)
    if key is None:
        load(name)  # raises the StudyError naming the known studies
    try:
        cached = orjson.loads((study_dir(name) / "summary.json").read_bytes())
        if cached.get("journal") == key:
            return cached["summary"]
    except (FileNotFoundError, orjson.JSONDecodeError):
        pass
    summary = summarize(load(name))
    write_summary(name, summary, key)
    return summary


def refresh_summary(study) -> dict[str, Any]:
    """Recompute and cache the summary of a study the caller has open (the tuner, after each change)."""
    name = spec_of(study).name
    key = _journal_key(name)
    summary = summarize(study)
    write_summary(name, summary, key)
    return summary


def final_results(summary: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean ± std (ddof=0) over the finished finalized runs of their test value of the study's metric, or None
    before finalize. *records*: the store's records of ``summary['final_runs']``. ``finished`` of ``launched``
    seeds count: a crashed or still running seed is counted out, never silently dropped."""
    if not summary["final_runs"]:
        return None
    metric = summary["spec"]["metric"]
    finished = [r for r in records if r.get("state") == "finished" and f"test/{metric}" in (r.get("best") or {})]
    values = [r["best"][f"test/{metric}"]["value"] for r in finished]
    return {
        "runs": summary["final_runs"],
        "states": {r["id"]: r.get("state") for r in records},
        "metric": metric,
        "values": values,
        "finished": len(finished),
        "launched": len(summary["final_runs"]),
        "epochs": summary.get("final_epochs"),
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.pstdev(values) if values else None,
    }


def final_text(final: dict[str, Any]) -> str:
    """The finalized result in one line, as ``tune status`` and the Studies view show it: the test metric x100 as
    mean ± std over the finished seeds, ``n = finished/launched`` with the others' states, and the epoch rule."""
    shown = f"{100 * final['mean']:.2f} ± {100 * final['std']:.2f}" if final["mean"] is not None else "not yet"
    others: dict[str, int] = {}
    for run_id in final["runs"]:
        state = final["states"].get(run_id, "removed from the store")
        if state != "finished":
            others[state] = others.get(state, 0) + 1
    text = f"finalized: test {final['metric']} x100 {shown}, n = {final['finished']}/{final['launched']} seeds"
    text += f" ({', '.join(f'{count} {state}' for state, count in others.items())})" if others else ""
    epochs = final.get("epochs")
    return text + (f"; {epochs['epochs']} epochs: {epochs['rule']}" if epochs else "")
