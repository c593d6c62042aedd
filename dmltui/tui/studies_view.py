"""What the Studies view shows, as plain functions over ``dmltui.tune.study`` summaries (no Textual here).

A summary (``read_summary``) is what ``dmltui tune status --json`` prints: the spec, one row per trial, the counts, the
best trial and the best value after each trial. The functions here turn it into table cells, plot points and the
header; :func:`param_importances` is the one slow call (Optuna's fANOVA), meant for a worker thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from dmltui.tui.format import metric_text, progress_text, state_text
from dmltui.tune import study as studies

# ANSI colour names: the same meaning in 16 colours
TRIAL_COLOURS = {"complete": "green", "pruned": "magenta", "running": "yellow", "fail": "red", "waiting": "cyan"}
# a shell continuation: each line fits 80 columns and the whole pastes as one command
START_COMMAND = "uv run dmltui tune margin-b12-d cub200 \\\n    --space 'optim.lr=loguniform(1e-6,1e-3)' --trials 20"
IMPORTANCE_SEED = 0  # fANOVA fits a random forest: a fixed seed keeps the ranking still between refreshes


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --------------------------------------------------------------------------- the searched parameters


@dataclass(frozen=True)
class ParamAxis:
    """How a searched key is plotted: numbers on a linear or log axis, choices at evenly spaced positions."""

    key: str
    form: str  # uniform, loguniform, int, logint or choice (dmltui.tune.space.FORMS)
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def log(self) -> bool:
        return self.form in ("loguniform", "logint")


def param_axes(spec: dict[str, Any]) -> list[ParamAxis]:
    """One axis per ``--space`` text of the study, in the order they were given."""
    from dmltui.tune.space import parse_param

    axes = []
    for text in spec["space"]:
        param = parse_param(text)
        axes.append(ParamAxis(param.key, param.form, param.low, param.high, param.choices))
    return axes


def param_text(value: Any) -> str:
    """As ``tune status`` prints a parameter: floats with 4 significant digits."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tick_labels(values: Sequence[float]) -> list[str]:
    """Numbers as ``%g`` writes them, unless one of them needs an exponent: then all have one (``1e-6 ... 1e-3``, not
    ``1e-05, 0.0001``), without the zeros ``%e`` pads with."""
    plain = [f"{value:g}" for value in values]
    if not any("e" in text for text in plain):
        return plain
    labels = []
    for value in values:
        mantissa, exponent = f"{value:.3e}".split("e")
        labels.append(f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}")
    return labels


def decade_ticks(low: float, high: float) -> list[float]:
    """Powers of ten from *low* to *high* (a log axis's ticks); the two bounds when fewer than two decades fit."""
    first, last = math.ceil(math.log10(low) - 1e-9), math.floor(math.log10(high) + 1e-9)
    ticks = [10.0 ** power for power in range(first, last + 1)]
    return ticks if len(ticks) >= 2 else [low, high]


# --------------------------------------------------------------------------- header and the studies list


def spec_line(spec: dict[str, Any]) -> str:
    return (f"{' '.join(spec['presets'])} on {spec['dataset'] or '?'} · {spec['folds']}-fold class-disjoint validation · "
            f"maximising {spec['metric']} · {spec['sampler']} sampler, {spec['pruner']} pruner")


def counts_line(summary: dict[str, Any]) -> str:
    counts = summary["counts"]
    return (f"trials {counts['total']}/{counts['requested']}: {counts['complete']} complete, {counts['pruned']} pruned, "
            f"{counts['running']} running, {counts['fail']} failed")


def header_text(summary: dict[str, Any], final: dict[str, Any] | None) -> Text:
    """What the study searches, its trials by state and the best, and the finalized result when there is one."""
    text = Text(spec_line(summary["spec"]), style="dim")
    text.append("\n" + counts_line(summary))
    best = summary["best"]
    if best:
        text.append(" · best ")
        text.append(metric_text(best["value"]), style="bold green")
        text.append(f" (trial {best['number']})")
    if final:
        text.append("\n")
        text.append(studies.final_text(final), style="bold")
    return text


def final_of(summary: dict[str, Any], record_of: Callable[[str], dict[str, Any] | None]) -> dict[str, Any] | None:
    """``final_results`` with the store records of the finalized runs (*record_of*: run id -> record or None)."""
    records = [r for r in (record_of(run_id) for run_id in summary["final_runs"]) if r is not None]
    return studies.final_results(summary, records)


STUDY_COLUMNS = {"name": "study", "trials": "trials", "running": "running", "pruned": "pruned", "best": "best",
                 "metric": "metric", "what": "presets on dataset"}


def study_cells(name: str, summary: dict[str, Any] | None, error: str | None = None) -> dict[str, Any]:
    """One row of the studies list, keyed by STUDY_COLUMNS; a study that cannot be read says why in its last cell."""
    if summary is None:
        blank = dict.fromkeys(STUDY_COLUMNS, "-")
        return {**blank, "name": name, "what": Text(error or "unreadable", style="red")}
    counts, spec, best = summary["counts"], summary["spec"], summary["best"]
    right = lambda value: Text(str(value), justify="right")  # noqa: E731
    return {"name": name, "trials": right(f"{counts['total']}/{counts['requested']}"), "running": right(counts["running"]),
            "pruned": right(counts["pruned"]),
            "best": Text(metric_text(best["value"] if best else None), justify="right", style="bold" if best else ""),
            "metric": spec["metric"], "what": f"{' '.join(spec['presets'])} on {spec['dataset'] or '?'}"}


def read_summaries(names: Iterable[str]) -> dict[str, tuple[dict[str, Any] | None, str | None]]:
    """name -> (summary, None), or (None, why) for a study whose journal cannot be read."""
    out: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
    for name in names:
        try:
            out[name] = (studies.read_summary(name), None)
        except Exception as error:  # noqa: BLE001 - Optuna's errors on a torn journal have no common base: show it
            out[name] = (None, one_line(error))
    return out


# --------------------------------------------------------------------------- the trials table


def last_intermediate(row: dict[str, Any]) -> float | None:
    """The trial's last reported value (the folds' mean at its latest epoch), None before any."""
    values = list(row.get("intermediate", {}).values())
    return values[-1] if values else None


def trial_columns(axes: Sequence[ParamAxis]) -> list[tuple[str, str, int]]:
    """(key, header, width) per column: fixed widths, so a refresh never re-measures the table."""
    fixed = [("number", "#", 4), ("state", "state", 8), ("value", "value", 8), ("epochs", "epochs", 6)]
    return fixed + [(f"param:{axis.key}", axis.key, max(len(axis.key), 10)) for axis in axes]


def trial_cells(row: dict[str, Any], axes: Sequence[ParamAxis], best_number: int | None) -> list[Text]:
    """A trial's cells in ``trial_columns`` order. An unfinished or pruned trial shows its last reported value, dim and
    in parentheses: it is not the trial's value."""
    state = row["state"]
    if row["value"] is not None:
        value = Text(metric_text(row["value"]), justify="right", style="bold green" if row["number"] == best_number else "")
    elif (last := last_intermediate(row)) is not None:
        value = Text(f"({metric_text(last)})", justify="right", style="dim")
    else:
        value = Text("-", justify="right")
    cells = [Text(str(row["number"]), justify="right"), Text(state, style=TRIAL_COLOURS.get(state, "")), value,
             Text(str(row.get("epochs_reported", 0)), justify="right")]
    return cells + [Text(param_text(row["params"].get(axis.key)), justify="right") for axis in axes]


def trial_note(row: dict[str, Any], metric: str) -> Text:
    """The line over a trial's fold runs: its state, value or last reported value, and why it ended when it says."""
    text = Text(f"trial {row['number']} ", style="bold")
    text.append(row["state"], style=TRIAL_COLOURS.get(row["state"], ""))
    if row["value"] is not None:
        text.append(f" · {metric} {metric_text(row['value'])}, the folds' mean")
    elif (last := last_intermediate(row)) is not None:
        text.append(f" · {metric} {metric_text(last)} at epoch {list(row['intermediate'])[-1]}, the folds' mean")
    if row.get("reason"):
        text.append(f" · {row['reason']}", style="red" if row["state"] == "fail" else "")
    text.append(" · enter: its runs" if row.get("runs") else " · no fold run started", style="dim")
    return text


def fold_of(record: dict[str, Any]) -> int | None:
    for tag in record.get("tags", []):
        if tag.startswith("fold:") and tag[5:].isdigit():
            return int(tag[5:])
    return None


# the run id is the row's key, not a column: the name says as much and the table fits 80 columns
FOLD_RUN_COLUMNS = (("fold", "fold", 4), ("state", "state", 16), ("epoch", "epoch", 16), ("val", "best val", 8),
                    ("name", "name", None))


def fold_run_cells(record: dict[str, Any], metric: str) -> list[Any]:
    """A fold run's cells in FOLD_RUN_COLUMNS order: its best validation value of the study's metric (what the trial's
    value averages); a run the pruner stopped says so beside its state."""
    state = state_text(record["state"])
    if "pruned" in record.get("tags", []):
        state.append(" (pruned)", style="magenta")
    best = (record.get("best") or {}).get(f"val/{metric}") or {}
    fold = fold_of(record)
    return [Text("-" if fold is None else str(fold), justify="right"), state,
            progress_text(record.get("epoch"), record.get("epochs")),
            Text(metric_text(best.get("value")), justify="right"), record.get("name") or record["id"]]


# --------------------------------------------------------------------------- plots


def steps(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    """The points of a step line through (xs, ys): the best so far holds until the trial that beats it."""
    out_x, out_y = [], []
    for index, (x, y) in enumerate(zip(xs, ys)):
        if index:
            out_x.append(x)
            out_y.append(ys[index - 1])
        out_x.append(x)
        out_y.append(y)
    return out_x, out_y


@dataclass
class History:
    """The optimisation history: every complete trial's value, and the best value so far after each trial."""

    trials: list[int]
    values: list[float]
    best_trials: list[int]
    best_values: list[float]


def history(summary: dict[str, Any]) -> History:
    out = History([], [], [], [])
    for row, best in zip(summary["trials"], summary["best_so_far"]):
        if row["state"] == "complete" and row["value"] is not None:
            out.trials.append(row["number"])
            out.values.append(row["value"])
        if best is not None:
            out.best_trials.append(row["number"])
            out.best_values.append(best)
    return out


@dataclass
class Scatter:
    """One parameter against the objective over the complete trials, in plot units: a log-searched key is drawn as
    log10 of its values on a linear axis (plotext 5's own log scale takes the logarithm again at every redraw, and a
    widget redraws on every resize), ticked at powers of ten labelled with the values themselves."""

    key: str
    xs: list[float]
    ys: list[float]
    log: bool
    ticks: list[float]
    labels: list[str]
    xlim: tuple[float, float]


def scatter(summary: dict[str, Any], axis: ParamAxis) -> Scatter:
    """Choices sit at 0, 1, 2... labelled with their values; numbers keep their scale (log for log-searched keys),
    the axis spanning the searched range so that points do not move as trials arrive."""
    xs, ys = [], []
    for row in summary["trials"]:
        value = row["params"].get(axis.key)
        if row["state"] != "complete" or row["value"] is None or value is None:
            continue
        if axis.form == "choice":
            if value not in axis.choices:
                continue
            value = axis.choices.index(value)
        xs.append(math.log10(value) if axis.log else float(value))
        ys.append(row["value"])
    if axis.form == "choice":
        count = len(axis.choices)
        return Scatter(axis.key, xs, ys, False, list(range(count)), [str(c) for c in axis.choices], (-0.5, count - 0.5))
    low, high = float(axis.low), float(axis.high)
    if axis.log:
        ticks = decade_ticks(low, high)
        return Scatter(axis.key, xs, ys, True, [math.log10(t) for t in ticks], tick_labels(ticks),
                       (math.log10(low), math.log10(high)))
    return Scatter(axis.key, xs, ys, False, [], [], (low, high))


# --------------------------------------------------------------------------- parameter importances


@dataclass
class Importances:
    """Optuna's parameter importances (they sum to 1), or the one-line reason there are none."""

    values: dict[str, float]
    reason: str | None = None
    trials: int = 0  # the complete trials they were computed from


def importance_reason(summary: dict[str, Any]) -> str | None:
    """Why the study cannot rank its parameters yet (None when it can)."""
    keys = [text.partition("=")[0].strip() for text in summary["spec"]["space"]]
    if len(keys) < 2:
        return f"one searched parameter ({keys[0] if keys else 'none'}): there is nothing to rank it against"
    complete = summary["counts"]["complete"]
    if complete < 2:
        return f"parameter importances need at least 2 complete trials; this study has {complete}"
    return None


def param_importances(name: str, summary: dict[str, Any]) -> Importances:
    """fANOVA importances of the stored study's parameters over its complete trials: seconds (a random forest), so
    call it from a worker. Never raises: a study Optuna cannot rank gives the reason."""
    complete = summary["counts"]["complete"]
    reason = importance_reason(summary)
    if reason:
        return Importances({}, reason, complete)
    try:
        from optuna.importance import FanovaImportanceEvaluator, get_param_importances

        values = get_param_importances(studies.load(name), evaluator=FanovaImportanceEvaluator(seed=IMPORTANCE_SEED))
    except Exception as error:  # noqa: BLE001 - e.g. RuntimeError when every trial has the same value
        return Importances({}, f"Optuna could not rank the parameters: {one_line(error)}", complete)
    return Importances(dict(values), None, complete)


def importance_bar(share: float, width: int) -> str:
    """A horizontal bar of *share* (0..1) of *width* cells, in eighths of a cell."""
    eighths = round(max(0.0, min(1.0, share)) * width * 8)
    full, part = divmod(eighths, 8)
    return "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")
