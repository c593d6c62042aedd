"""Read a run's metrics.jsonl into the rows people compare."""

from __future__ import annotations

from typing import Any

from engine.metric_names import display_name


def eval_records(records: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("kind") == "eval" and r.get("split") == split]


def before_after_rows(records: list[dict[str, Any]], *, split: str = "test", select: str = "e_recall@1") -> list[dict[str, Any]]:
    """Raw pixels, the untrained network (epoch 0), the best epoch by *select* and the last epoch."""
    rows = []
    for record in records:
        if record.get("kind") == "baseline" and record.get("split") == split:
            rows.append({"label": record.get("name", "baseline").replace("_", " "), "epoch": None, "metrics": record["metrics"]})
    evals = eval_records(records, split)
    untrained = [r for r in evals if r.get("epoch") == 0]
    trained = [r for r in evals if (r.get("epoch") or 0) > 0]
    if untrained:
        rows.append({"label": "untrained network", "epoch": 0, "metrics": untrained[-1]["metrics"]})
    if trained:
        last = trained[-1]
        scored = [r for r in trained if isinstance(r["metrics"].get(select), (int, float))]
        best = max(scored, key=lambda r: (r["metrics"][select], -r["epoch"])) if scored else last
        if best is last:
            rows.append({"label": "trained (best = last epoch)", "epoch": last["epoch"], "metrics": last["metrics"]})
        else:
            rows.append({"label": f"trained (best {display_name(select)})", "epoch": best["epoch"], "metrics": best["metrics"]})
            rows.append({"label": "trained (last epoch)", "epoch": last["epoch"], "metrics": last["metrics"]})
    return rows


def scalar_metric_names(rows: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in rows:
        for name, value in row["metrics"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name not in names:
                names.append(name)
    return names
