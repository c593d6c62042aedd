"""Comparing runs: the config keys that differ, best metrics, and mean ± std over seeds.

Pure functions over store documents (no typer, no rich), shared by ``dmltui compare``,
``dmltui report`` and the TUI. A store document carries ``config`` (the nested resolved
config) and ``best`` = ``{"<split>/<metric>": {"value", "epoch"}}``: the best value of
every scalar metric over the epochs >= 1 and the (first) epoch it was reached
(``engine.rundir.best_metrics``).

Which epoch each run's values come from is a *selection* (``dmltui.selection``): ``val`` (the
test metrics at the epoch of the best validation value), ``last`` or ``test-max`` (each metric's
maximum over the test epochs, the paper's protocol). Every row says which (``selection``), and the
human formats say it in a footnote (LaTeX: a comment).

Aggregation follows the paper's ``Result_Evaluations.py`` (reference inventory §11): every
run's selected value of each metric (under test-max: each seed's best test epoch, per metric;
not the maximum of the mean curve), then the mean and the standard deviation of those values
over the runs of a group. The standard deviation is the population one (ddof=0), numpy's
default, which the paper's script used: three seeds at 0.60, 0.62 and 0.64 give 62.00 ± 1.63.

Row shapes (plain dicts, JSON-ready):

* :func:`comparison` rows: ``{"id", "name", "state", "dataset", "preset", "seed",
  "config": {differing key: value}, "metrics": {metric: {"value", "epoch"} | None}, "split",
  "selection", "selected_epoch", "selected_by"}`` (``selected_epoch``: None under test-max;
  ``selected_by``: ``val/<metric>`` under val)
* :func:`group_summary` rows: ``{"group", "group_by", "dataset", "n", "runs", "seeds",
  "metrics": {metric: {"n", "mean", "std", "values", "epochs"}}, "best_epoch",
  "epoch_metric", "split", "selection", "selected_by": [...]}`` (``mean``/``std`` are None where
  no run of the group logged it; ``best_epoch``: the mean epoch of the first metric's values)

The formatters take either kind of rows. Human formats (table, Markdown, LaTeX) show
fraction metrics (recalls, NMI, F1, mAP...) x100 with 2 decimals, the paper's style,
and mark the best row per metric column (per dataset) in bold; CSV and JSON keep the
raw values.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from dmltui.config_summary import reference
from dmltui.runs import config_value, load_config, strip_seed
from dmltui.selection import choose_selection, describe, run_selection
from engine.metric_names import display_name

PAPER_METRICS = ("e_recall@1", "e_recall@2", "e_recall@4", "nmi", "f1", "mAP_c")
GROUP_BUILTINS = ("preset", "name")
# config keys that name a run rather than configure it (dmltui.runs.named_for_wandb fills them from the run)
WANDB_IDENTITY = ("log.name", "log.id", "log.group", "log.tags")
_MISSING = object()

# metrics that are fractions in [0, 1], shown x100 in human formats
_FRACTION_PREFIXES = ("e_recall@", "c_recall@")
_FRACTION_NAMES = {"nmi", "f1", "mAP_c", "mAP_1000", "mAP_lim", "precision_at_1", "r_precision", "map_at_r",
                   "mean_reciprocal_rank", "ami"}


class MetricNotLogged(ValueError):
    """A requested metric that none of the runs logged on the split."""

    def __init__(self, metric: str, split: str, logged: Sequence[str]):
        self.metric, self.split, self.logged = metric, split, list(logged)
        shown = ", ".join(logged) if logged else "none"
        super().__init__(f"metric {metric!r} was never logged on split {split!r} by these runs; logged there: {shown}")


class UnknownGroupKey(ValueError):
    """``group_by`` is neither preset, name, a run field nor a config key of the runs."""


# --------------------------------------------------------------------------- config keys


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"loss.name": "margin", ...}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in (config or {}).items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def differing_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """Sorted dotted config keys whose value is not the same in every run (a key some run lacks differs), but for
    the W&B identity dmltui gives each run (:data:`WANDB_IDENTITY`): the run's own name, id, group and tags."""
    flats = [flatten_config(load_config(r)) for r in records]
    if len(flats) < 2:
        return []
    keys = sorted(set().union(*flats) - set(WANDB_IDENTITY))
    first = flats[0]
    return [k for k in keys if any(not _same(f.get(k, _MISSING), first.get(k, _MISSING)) for f in flats[1:])]


def _same(a: Any, b: Any) -> bool:
    if a is _MISSING or b is _MISSING:
        return a is b
    return isinstance(a, bool) == isinstance(b, bool) and a == b


# --------------------------------------------------------------------------- metrics


def is_fraction(metric: str) -> bool:
    name = metric[2:] if metric.startswith("c_") and not metric.startswith("c_recall") else metric
    return name.startswith(_FRACTION_PREFIXES) or name in _FRACTION_NAMES


def lower_is_better(metric: str) -> bool:
    return metric.startswith("loss")  # as engine.rundir.best_metrics


def logged_metrics(records: Iterable[dict[str, Any]], split: str = "test") -> list[str]:
    """Sorted names of the metrics with a best value on *split* in any of the runs."""
    prefix = f"{split}/"
    return sorted({key[len(prefix):] for r in records for key in (r.get("best") or {}) if key.startswith(prefix)})


def logged_splits(records: Iterable[dict[str, Any]]) -> list[str]:
    return sorted({key.split("/", 1)[0] for r in records for key in (r.get("best") or {})})


def check_metrics(records: Sequence[dict[str, Any]], metrics: Sequence[str], split: str = "test") -> None:
    """Raise :class:`MetricNotLogged` for the first metric no run logged on *split*."""
    logged = logged_metrics(records, split)
    for metric in metrics:
        if metric not in logged:
            raise MetricNotLogged(metric, split, logged)


def default_metrics(records: Sequence[dict[str, Any]], split: str = "test") -> list[str]:
    """The paper's metrics (R@1, R@2, R@4, NMI, F1, mAP) that the runs logged, else every logged metric."""
    logged = logged_metrics(records, split)
    return [m for m in PAPER_METRICS if m in logged] or logged


# --------------------------------------------------------------------------- rows


def comparison(records: Sequence[dict[str, Any]], metrics: Sequence[str], split: str = "test",
               selection: str | None = None) -> list[dict[str, Any]]:
    """One row per run: the config values that differ across the runs and the selected value/epoch of each metric.

    *selection*: val, last or test-max; None: the default (``dmltui.selection.choose_selection``). Raises
    MetricNotLogged, and NoValidationSplit for val on runs without a validation split."""
    check_metrics(records, metrics, split)
    selection, _ = choose_selection(records, selection)
    keys = differing_keys(records)
    rows = []
    for record in records:
        flat = flatten_config(load_config(record))
        chosen = run_selection(record, selection, split)
        rows.append({
            "id": record.get("id"),
            "name": record.get("name"),
            "state": record.get("state"),
            "dataset": record.get("dataset"),
            "preset": record.get("preset"),
            "seed": record.get("seed"),
            "config": {key: flat.get(key) for key in keys},
            "metrics": {metric: chosen.metrics.get(metric) for metric in metrics},
            "split": split,
            "selection": selection,
            "selected_epoch": chosen.epoch,
            "selected_by": chosen.selected_by,
        })
    return rows


def _value_text(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _config_value(record: dict[str, Any], key: str) -> Any:
    return config_value(record, key, _MISSING)


def group_label(record: dict[str, Any], group_by: str = "preset") -> str:
    """The run's group under *group_by*: ``preset``, ``name`` without its seed, a dotted config key (``loss.name``
    or, as a query names it, ``config.loss.name``) or a run field."""
    if group_by == "preset":
        return tuned_label(record) or record.get("preset") or "(no preset)"
    if group_by == "name":
        return strip_seed(record.get("name") or record.get("id") or "")
    value = _config_value(record, group_by.removeprefix("config."))
    if value is not _MISSING:
        return _value_text(value)
    value = record.get(group_by, _MISSING)
    if value is not _MISSING and not isinstance(value, dict):
        return _value_text(value)
    return "(unset)"


def tuned_label(record: dict[str, Any]) -> str | None:
    """``margin-b12-d (tuned, 50 trials)`` for a run of ``dmltui tune finalize`` (tagged ``tuned:<trials>``), so that
    a tuned method is its own row beside the paper-protocol runs of its preset."""
    for tag in record.get("tags", ()):
        if tag.startswith("tuned:"):
            return f"{record.get('preset') or '(no preset)'} (tuned, {tag[len('tuned:'):]} trials)"
    return None


def check_group_key(records: Sequence[dict[str, Any]], group_by: str) -> None:
    """Raise :class:`UnknownGroupKey` unless *group_by* is preset, name, or a config key / run field of some run."""
    if group_by in GROUP_BUILTINS:
        return
    key = group_by.removeprefix("config.")
    if any(_config_value(r, key) is not _MISSING or not isinstance(r.get(group_by, {}), dict) for r in records):
        return
    keys: set[str] = set()
    for record in records:
        keys.update(k for k in reference() if _config_value(record, k) is not _MISSING)
        keys.update(k for k in (record.get("config_changes") or {}) if _config_value(record, k) is not _MISSING)
        if record.get("config_changes") is None or record.get("config"):
            keys.update(flatten_config(load_config(record)))
        keys.update(k for k, v in record.items() if not isinstance(v, dict))
    close = difflib.get_close_matches(group_by, sorted(keys), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnknownGroupKey(f"cannot group by {group_by!r}{hint}: use preset, name, or a dotted config key such as "
                          "loss.name, miner.name, data.dataset")


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _std(values: Sequence[float]) -> float | None:
    """Population standard deviation (ddof=0), numpy's default, as in the paper's script."""
    if not values:
        return None
    import numpy as np

    return float(np.std(np.asarray(values, dtype=float)))


def group_runs(records: Sequence[dict[str, Any]], group_by: str = "preset") -> dict[tuple[str, str], list[dict[str, Any]]]:
    """``{(dataset, group label): [runs]}`` sorted by dataset then label. Runs of different datasets never
    share a group: averaging one method's R@1 over CUB and CARS would mean nothing."""
    check_group_key(records, group_by)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((str(record.get("dataset") or ""), group_label(record, group_by)), []).append(record)
    return dict(sorted(groups.items()))


def group_summary(records: Sequence[dict[str, Any]], group_by: str = "preset", metrics: Sequence[str] | None = None,
                  split: str = "test", *, include_unfinished: bool = False,
                  selection: str | None = None) -> list[dict[str, Any]]:
    """Mean and std (ddof=0) over each group's runs of every run's selected value, per dataset and group.

    Groups: ``preset``, ``name`` without its ``-s<seed>``/``_s<seed>`` suffix, or a dotted config key
    (``loss.name``) or run field (``loss``). Only ``finished`` runs unless *include_unfinished*. Per metric,
    ``n`` counts the runs that logged it. ``best_epoch`` is the mean over the runs of the epoch of the
    first metric's value. *selection* as for :func:`comparison`, chosen over the runs summarised.
    """
    selected = list(records) if include_unfinished else [r for r in records if r.get("state") == "finished"]
    if not selected:
        return []
    metrics = list(metrics) if metrics else default_metrics(selected, split)
    check_metrics(selected, metrics, split)
    selection, _ = choose_selection(selected, selection)
    rows = []
    for (dataset, label), runs in group_runs(selected, group_by).items():
        picked = [run_selection(r, selection, split) for r in runs]
        stats: dict[str, dict[str, Any]] = {}
        for metric in metrics:
            entries = [e for e in (chosen.metrics.get(metric) for chosen in picked) if e is not None]
            values = [float(e["value"]) for e in entries]
            stats[metric] = {"n": len(values), "mean": _mean(values), "std": _std(values), "values": values,
                             "epochs": [e["epoch"] for e in entries]}
        epochs = [e for e in stats[metrics[0]]["epochs"] if isinstance(e, (int, float))] if metrics else []
        rows.append({
            "group": label,
            "group_by": group_by,
            "dataset": dataset,
            "n": len(runs),
            "runs": [r.get("id") for r in runs],
            "seeds": [r.get("seed") for r in runs],
            "metrics": stats,
            "best_epoch": _mean(epochs),
            "epoch_metric": metrics[0] if metrics else None,
            "split": split,
            "selection": selection,
            "selected_by": sorted({chosen.selected_by for chosen in picked if chosen.selected_by}),
        })
    return rows


def selection_note(rows: Sequence[dict[str, Any]]) -> str:
    """How the rows' values were chosen (:func:`dmltui.selection.describe`), for a table's footnote; empty without
    rows."""
    if not rows:
        return ""
    by = [b for row in rows for b in ([row["selected_by"]] if isinstance(row["selected_by"], str)
                                      else row["selected_by"] or [])]
    return describe(rows[0]["selection"], rows[0]["split"], by)


# --------------------------------------------------------------------------- formatting


class TableRows(NamedTuple):
    """Display cells: ``headers``, ``rows`` (strings), ``bold`` ((row, column) of each best cell), ``lead`` (how
    many leading columns are labels; the rest are numbers) and ``note`` (how the values were selected: the
    table's footnote)."""

    headers: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]]
    lead: int
    note: str


def _is_groups(rows: Sequence[dict[str, Any]]) -> bool:
    return bool(rows) and "group" in rows[0]


def _metrics_of(rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None) -> list[str]:
    if metrics is not None:
        return list(metrics)
    return list(rows[0]["metrics"]) if rows else []


def _score(row: dict[str, Any], metric: str) -> float | None:
    entry = row["metrics"].get(metric)
    if not entry:
        return None
    value = entry.get("mean") if "mean" in entry else entry.get("value")
    return float(value) if isinstance(value, (int, float)) else None


def best_cells(rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None) -> set[tuple[int, str]]:
    """(row index, metric) of the best value of every metric column among the rows of the same dataset
    (ties all count); a column is only marked when at least two rows have a value."""
    marked: set[tuple[int, str]] = set()
    for metric in _metrics_of(rows, metrics):
        by_dataset: dict[Any, list[tuple[int, float]]] = {}
        for index, row in enumerate(rows):
            score = _score(row, metric)
            if score is not None:
                by_dataset.setdefault(row.get("dataset"), []).append((index, score))
        for scored in by_dataset.values():
            if len(scored) < 2:
                continue
            pick = min if lower_is_better(metric) else max
            best = pick(score for _, score in scored)
            marked.update((index, metric) for index, score in scored if math.isclose(score, best, rel_tol=1e-12, abs_tol=1e-15))
    return marked


def _number(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if is_fraction(metric) else f"{value:.4f}"


def _cell(row: dict[str, Any], metric: str, pm: str) -> str:
    entry = row["metrics"].get(metric)
    if not entry:
        return "-"
    if "mean" in entry:
        if entry["mean"] is None:
            return "-"
        return f"{_number(metric, entry['mean'])}{pm}{_number(metric, entry['std'])}"
    epoch = entry.get("epoch")
    return f"{_number(metric, entry['value'])} ({epoch})" if epoch is not None else _number(metric, entry["value"])


def _many_datasets(rows: Sequence[dict[str, Any]]) -> bool:
    return len({row.get("dataset") for row in rows}) > 1


def _display(rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None, labels: dict[str, str] | None,
             pm: str) -> TableRows:
    metrics = _metrics_of(rows, metrics)
    labels = labels or {}
    label = lambda m: labels.get(m, display_name(m))  # noqa: E731
    marked = best_cells(rows, metrics)
    if _is_groups(rows):
        with_dataset = _many_datasets(rows)
        first = metrics[0] if metrics else None
        headers = (["Dataset"] if with_dataset else []) + ["Group", "n"] + [label(m) for m in metrics]
        epoch_of = label(first) if rows[0]["selection"] == "test-max" else rows[0]["selection"]
        headers += [f"Epoch ({epoch_of})"] if first else []
        lead = 2 if with_dataset else 1
        cells = []
        for row in rows:
            line = ([row["dataset"]] if with_dataset else []) + [row["group"], str(row["n"])]
            line += [_cell(row, m, pm) for m in metrics]
            if first:
                line.append(f"{row['best_epoch']:.1f}" if row.get("best_epoch") is not None else "-")
            cells.append(line)
    else:
        keys = list(rows[0]["config"]) if rows else []
        headers = ["Run", "Name", "State", *keys] + [f"{label(m)} (epoch)" for m in metrics]
        lead = 3 + len(keys)
        cells = [[str(row["id"]), str(row["name"]), str(row["state"]), *(_value_text(row["config"][k]) for k in keys),
                  *(_cell(row, m, pm) for m in metrics)] for row in rows]
    first_metric = len(headers) - len(metrics) - (1 if _is_groups(rows) and metrics else 0)
    bold = {(i, first_metric + metrics.index(m)) for i, m in marked}
    return TableRows(headers, cells, bold, lead, selection_note(rows))


def to_table_rows(rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None,
                  labels: dict[str, str] | None = None) -> TableRows:
    """Cells for a terminal table (fractions x100, ``mean ± std``; comparison cells ``value (epoch)``) and its
    footnote."""
    return _display(rows, metrics, labels, " ± ")


def to_markdown(rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None,
                labels: dict[str, str] | None = None) -> str:
    table = _display(rows, metrics, labels, " ± ")
    esc = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in table.headers) + " |",
             "|" + "|".join("---" if i < table.lead else "---:" for i in range(len(table.headers))) + "|"]
    for r, line in enumerate(table.rows):
        shown = [f"**{esc(cell)}**" if (r, c) in table.bold else esc(cell) for c, cell in enumerate(line)]
        lines.append("| " + " | ".join(shown) + " |")
    if table.note:
        lines += ["", esc(table.note)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                  "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None,
             labels: dict[str, str] | None = None, caption: str | None = None) -> str:
    """A ``tabular`` in the paper's style: ``62.09 $\\pm$ 0.35`` (x100, 2 decimals), the best group per column bold."""
    marker = "@@PM@@"
    table = _display(rows, metrics, labels, marker)
    spec = "l" * table.lead + "c" * (len(table.headers) - table.lead)
    tex = lambda text: latex_escape(text).replace(marker, r" $\pm$ ")  # noqa: E731
    lines = [f"% {latex_escape(caption)}" if caption else "% generated by dmltui",
             "% fractions x100; groups: mean $\\pm$ std over runs (std with ddof=0)",
             *([f"% {latex_escape(table.note)}"] if table.note else []),
             f"\\begin{{tabular}}{{{spec}}}", r"\hline",
             " & ".join(tex(h) for h in table.headers) + r" \\", r"\hline"]
    for r, line in enumerate(table.rows):
        shown = [f"\\textbf{{{tex(cell)}}}" if (r, c) in table.bold else tex(cell) for c, cell in enumerate(line)]
        lines.append(" & ".join(shown) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None) -> str:
    """Raw values. Groups: dataset, group, n, ``<metric>_mean``, ``_std``, ``_n`` per metric, best_epoch, selection.
    Runs: id, name, state, dataset, the differing config keys, ``<metric>`` and ``<metric>_epoch``, selection,
    selected_epoch."""
    metrics = _metrics_of(rows, metrics)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    blank = lambda v: "" if v is None else v  # noqa: E731
    if _is_groups(rows):
        writer.writerow(["dataset", "group", "n", *(f"{m}_{s}" for m in metrics for s in ("mean", "std", "n")),
                         "best_epoch", "selection"])
        for row in rows:
            stats = [row["metrics"].get(m) or {} for m in metrics]
            writer.writerow([row["dataset"], row["group"], row["n"],
                             *(blank(s.get(k)) for s in stats for k in ("mean", "std", "n")), blank(row.get("best_epoch")),
                             row["selection"]])
    else:
        keys = list(rows[0]["config"]) if rows else []
        writer.writerow(["id", "name", "state", "dataset", *keys, *(f"{m}{s}" for m in metrics for s in ("", "_epoch")),
                         "selection", "selected_epoch"])
        for row in rows:
            entries = [row["metrics"].get(m) or {} for m in metrics]
            writer.writerow([row["id"], row["name"], row["state"], blank(row.get("dataset")),
                             *(_value_text(row["config"][k]) if row["config"][k] is not None else "" for k in keys),
                             *(blank(e.get(k)) for e in entries for k in ("value", "epoch")),
                             row["selection"], blank(row["selected_epoch"])])
    return out.getvalue()


def to_json(rows: Sequence[dict[str, Any]]) -> str:
    """The rows with raw values, standard json module."""
    return json.dumps(list(rows), indent=2, sort_keys=True) + "\n"
