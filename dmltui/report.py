"""``dmltui report``: the paper's Result_Evaluations.py (reference inventory §11) from local runs.

Per dataset, over the finished runs grouped by preset (or name, or a config key):

* ``table_<dataset>.tex`` / ``.md``: R@1, R@2, F1, mAP (= ``mAP_c``, the paper's mAP), NMI as
  mean ± std over each group's runs of each run's selected test values (x100; std with ddof=0),
  and the mean epoch of the R@1 values; the best group per column in bold. The caption names the
  selection (``dmltui.selection``): under ``test-max``, the paper's protocol, each run's best
  test epoch per metric.
* ``recall_vs_rho_<dataset>.png``: group mean R@1 against group mean ρ, where a run's ρ is its
  **train** ``rho_spectrum@2`` at the epoch of its R@1 value (read from metrics.jsonl), with a
  least-squares line and the Pearson r in the legend.
* ``metric_correlation_<dataset>.png``: Pearson correlations across groups among R@1, R@2, R@4,
  NMI, F1 and mAP, as an annotated heatmap.
* ``report.json``: everything the files show (rows, the ρ points, fit and r, the matrix) and why
  anything was skipped.

A figure whose metrics were not logged (no train ρ, fewer than 3 groups) is skipped with a
message, never an error. Every file is written atomically.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dmltui.compare import group_runs, group_summary, logged_metrics, to_latex, to_markdown
from dmltui.selection import choose_selection, run_selection
from engine.io import atomic_write_bytes, atomic_write_text
from engine.metric_names import display_name
from engine.rundir import RunDir

TABLE_METRICS = ("e_recall@1", "e_recall@2", "f1", "mAP_c", "nmi")
CORRELATION_METRICS = ("e_recall@1", "e_recall@2", "e_recall@4", "nmi", "f1", "mAP_c")
LABELS = {"mAP_c": "mAP"}  # the paper's "mAP" is today's mAP_c
RHO_METRIC = "rho_spectrum@2"
SELECT_METRIC = "e_recall@1"
MIN_GROUPS = 3  # a line through two points always has |r| = 1


def label(metric: str) -> str:
    return LABELS.get(metric, display_name(metric))


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "unnamed"


# --------------------------------------------------------------------------- ρ at the best epoch


def rho_at_best_epoch(record: dict[str, Any], *, select: str = SELECT_METRIC, split: str = "test",
                      rho: str = RHO_METRIC, metrics: list[dict[str, Any]] | None = None,
                      selection: str = "test-max") -> float | None:
    """The run's train-split *rho* at the epoch of its *selection*'s *select* value on *split* (under test-max: its
    best *select*); None when not logged."""
    best = run_selection(record, selection, split).metrics.get(select)
    if not best or best.get("epoch") is None:
        return None
    if metrics is None:
        if not record.get("run_dir"):
            return None
        metrics = RunDir(record["run_dir"]).read_metrics()
    found = None
    for line in metrics:
        if line.get("kind") == "eval" and line.get("split") == "train" and line.get("epoch") == best["epoch"]:
            value = (line.get("metrics") or {}).get(rho)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                found = float(value)
    return found


def rho_points(records: Sequence[dict[str, Any]], group_by: str = "preset", *,
               include_unfinished: bool = False, selection: str = "test-max") -> list[dict[str, Any]]:
    """Per (dataset, group): mean selected R@1 over the group's runs and mean ρ over the runs that logged it.

    Groups with no run that logged train ρ at its selected epoch are left out.
    """
    rows = group_summary(records, group_by, [SELECT_METRIC], include_unfinished=include_unfinished, selection=selection)
    by_id = {r.get("id"): r for r in records}
    points = []
    for row in rows:
        rhos = [v for v in (rho_at_best_epoch(by_id[run_id], selection=selection) for run_id in row["runs"])
                if v is not None]
        r1 = row["metrics"][SELECT_METRIC]["mean"]
        if rhos and r1 is not None:
            points.append({"dataset": row["dataset"], "group": row["group"], "r1": r1, "rho": sum(rhos) / len(rhos),
                           "n": row["n"], "n_rho": len(rhos)})
    return points


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    import numpy as np

    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.corrcoef(np.asarray(x, dtype=float), np.asarray(y, dtype=float))[0, 1])


# --------------------------------------------------------------------------- figures


def _save_png(figure: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def rho_figure(points: list[dict[str, Any]], dataset: str, path: Path) -> dict[str, Any]:
    """Scatter of R@1 (x100) against ρ with the least-squares line; returns the fit and r."""
    import numpy as np
    from matplotlib.figure import Figure

    rho = np.array([p["rho"] for p in points])
    r1 = np.array([100 * p["r1"] for p in points])
    slope, intercept = (float(v) for v in np.polyfit(rho, r1, 1))
    r = pearson(rho, r1)
    figure = Figure(figsize=(6.4, 4.8))
    axes = figure.add_subplot()
    axes.scatter(rho, r1, s=60, zorder=3)
    for point, x, y in zip(points, rho, r1, strict=True):
        axes.annotate(point["group"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    xs = np.linspace(rho.min(), rho.max(), 50)
    axes.plot(xs, slope * xs + intercept, "--", color="tab:red", label=f"linear fit, Pearson r = {r:.3f}")
    axes.set_xlabel(r"$\rho$ (train rho_spectrum@2 at the epoch of each run's R@1)")
    axes.set_ylabel("R@1 (%)")
    axes.set_title(f"{dataset}: R@1 against $\\rho$ (r = {r:.3f}, {len(points)} groups)")
    axes.grid(alpha=0.3)
    axes.legend()
    _save_png(figure, path)
    return {"points": points, "slope": slope, "intercept": intercept, "r": r, "file": str(path)}


def correlation_figure(rows: list[dict[str, Any]], metrics: list[str], dataset: str, path: Path) -> dict[str, Any]:
    """Annotated heatmap of the Pearson correlations across groups of the groups' mean metrics."""
    import numpy as np
    from matplotlib.figure import Figure

    values = np.array([[row["metrics"][m]["mean"] for m in metrics] for row in rows], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.corrcoef(values, rowvar=False)
    names = [label(m) for m in metrics]
    figure = Figure(figsize=(1.1 * len(metrics) + 2, 1.0 * len(metrics) + 1.5))
    axes = figure.add_subplot()
    image = axes.imshow(np.nan_to_num(matrix, nan=0.0), cmap="coolwarm", vmin=-1, vmax=1)
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            value = matrix[i, j]
            axes.text(j, i, "n/a" if not np.isfinite(value) else f"{value:.2f}", ha="center", va="center", fontsize=9,
                      color="white" if np.isfinite(value) and abs(value) > 0.6 else "black")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_title(f"{dataset}: metric correlations across {len(rows)} groups")
    _save_png(figure, path)
    return {"metrics": list(metrics), "groups": [row["group"] for row in rows],
            "matrix": [[None if not math.isfinite(v) else float(v) for v in line] for line in matrix.tolist()],
            "file": str(path)}


# --------------------------------------------------------------------------- the report


def build_report(records: Sequence[dict[str, Any]], out_dir: str | Path, group_by: str = "preset", *,
                 messages: list[str] | None = None, include_unfinished: bool = False,
                 selection: str | None = None) -> list[Path]:
    """Write the tables, figures and report.json under *out_dir*; returns the written paths.

    Why a table column or a figure was left out is appended to *messages* (one line each). *selection*: one for
    every run of the report (None: the default over them, ``dmltui.selection.choose_selection``).
    Raises :class:`dmltui.compare.UnknownGroupKey` for a bad *group_by*, NoValidationSplit for val on runs
    without a validation split.
    """
    out = Path(out_dir)
    notes = messages if messages is not None else []
    note: Callable[[str], None] = notes.append
    selected = [r for r in records if include_unfinished or r.get("state") == "finished"]
    written: list[Path] = []
    selection, fallback = choose_selection(selected, selection)  # before anything is written, as group_by
    summary: dict[str, Any] = {"group_by": group_by, "runs": len(selected), "datasets": {}, "messages": notes,
                               "selection": selection}
    if fallback:
        note(fallback)
    if not selected:
        note("no finished runs: nothing to report")
    group_runs(selected, group_by)  # validates group_by before anything is written
    for dataset in sorted({str(r.get("dataset") or "") for r in selected}):
        runs = [r for r in selected if str(r.get("dataset") or "") == dataset]
        section: dict[str, Any] = {"runs": len(runs)}
        summary["datasets"][dataset] = section
        stem = safe_name(dataset)
        logged = logged_metrics(runs, "test")
        metrics = [m for m in TABLE_METRICS if m in logged]
        missing = [m for m in TABLE_METRICS if m not in logged]
        if missing:
            note(f"{dataset}: no run logged {', '.join(f'{label(m)} ({m})' for m in missing)} on the test split; "
                 "left out of the table")
        if not metrics:
            note(f"{dataset}: none of the table metrics was logged; no table or figures")
            continue
        rows = group_summary(runs, group_by, metrics, include_unfinished=include_unfinished, selection=selection)
        section["table"] = rows
        caption = f"{dataset}: x100, mean ± std (ddof=0) over each group's runs; grouped by {group_by}"
        for suffix, text in ((".tex", to_latex(rows, labels=LABELS, caption=caption)),
                             (".md", f"# {dataset}\n\n{caption}.\n\n" + to_markdown(rows, labels=LABELS))):
            path = out / f"table_{stem}{suffix}"
            atomic_write_text(path, text)
            written.append(path)

        # R@1 against ρ
        rho_path = out / f"recall_vs_rho_{stem}.png"
        if SELECT_METRIC not in logged:
            section["rho"] = {"skipped": f"no run logged {SELECT_METRIC}"}
        else:
            points = rho_points(runs, group_by, include_unfinished=include_unfinished, selection=selection)
            if len(points) < MIN_GROUPS:
                section["rho"] = {"skipped": f"{len(points)} group(s) with train {RHO_METRIC} at their R@1 epoch; "
                                             f"the figure needs {MIN_GROUPS} (log it with eval.train_metrics and "
                                             f"{RHO_METRIC} in eval.metrics)", "points": points}
            elif len({p["rho"] for p in points}) < 2 or len({p["r1"] for p in points}) < 2:
                section["rho"] = {"skipped": "every group has the same rho or the same R@1: no correlation to show",
                                  "points": points}
            else:
                section["rho"] = rho_figure(points, dataset, rho_path)
                written.append(rho_path)
        if "skipped" in section["rho"]:
            note(f"{dataset}: R@1-against-rho figure skipped: {section['rho']['skipped']}")

        # correlation matrix
        corr_metrics = [m for m in CORRELATION_METRICS if m in logged]
        if len(corr_metrics) < 2:
            section["correlation"] = {"skipped": f"only {len(corr_metrics)} of {', '.join(map(label, CORRELATION_METRICS))} "
                                                 "logged; the matrix needs 2"}
        else:
            corr_rows = [row for row in group_summary(runs, group_by, corr_metrics, include_unfinished=include_unfinished,
                                                      selection=selection)
                         if all(row["metrics"][m]["mean"] is not None for m in corr_metrics)]
            if len(corr_rows) < MIN_GROUPS:
                section["correlation"] = {"skipped": f"{len(corr_rows)} group(s) with all of "
                                                     f"{', '.join(map(label, corr_metrics))}; the matrix needs {MIN_GROUPS}"}
            else:
                corr_path = out / f"metric_correlation_{stem}.png"
                section["correlation"] = correlation_figure(corr_rows, corr_metrics, dataset, corr_path)
                written.append(corr_path)
        if "skipped" in section["correlation"]:
            note(f"{dataset}: metric correlation figure skipped: {section['correlation']['skipped']}")

    path = out / "report.json"
    atomic_write_text(path, json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    written.append(path)
    return written
