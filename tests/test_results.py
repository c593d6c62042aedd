from __future__ import annotations

from dmltui.results import before_after_rows, scalar_metric_names
from engine.metrics import display_name
from engine.rundir import best_metrics


def rec(kind, epoch, split="test", **metrics):
    return {"kind": kind, "epoch": epoch, "split": split, "metrics": metrics}


RECORDS = [
    {"kind": "baseline", "name": "raw_pixels", "epoch": None, "split": "test", "metrics": {"e_recall@1": 0.3}},
    rec("eval", 0, **{"e_recall@1": 0.9, "nmi": 0.5}),  # the untrained network is never "best"
    rec("train", 1, split="train", loss=0.5),
    rec("eval", 1, **{"e_recall@1": 0.6, "nmi": 0.6}),
    rec("eval", 1, split="val", **{"e_recall@1": 0.2}),
    rec("train", 2, split="train", loss=0.4),
    rec("eval", 2, **{"e_recall@1": 0.7, "nmi": 0.55, "rho_spectrum@0": [0.5, 0.5]}),
    rec("eval", 3, **{"e_recall@1": 0.7, "nmi": 0.5}),
]


def test_before_after_rows_pick_baseline_untrained_best_and_last():
    rows = before_after_rows(RECORDS)
    assert [(r["label"], r["epoch"]) for r in rows] == [
        ("raw pixels", None), ("untrained network", 0), ("trained (best R@1)", 2), ("trained (last epoch)", 3)
    ]  # ties go to the earlier epoch
    assert scalar_metric_names(rows) == ["e_recall@1", "nmi"]
    single = before_after_rows(RECORDS[:4])
    assert [r["label"] for r in single][-1] == "trained (best = last epoch)"


def test_best_metrics_max_per_split_min_for_loss_and_skip_epoch_0():
    best = best_metrics(RECORDS)
    assert best["test/e_recall@1"] == {"value": 0.7, "epoch": 2}
    assert best["test/nmi"] == {"value": 0.6, "epoch": 1}
    assert best["val/e_recall@1"] == {"value": 0.2, "epoch": 1}
    assert best["train/loss"] == {"value": 0.4, "epoch": 2}
    assert "test/rho_spectrum@0" not in best


def test_display_names():
    assert [display_name(n) for n in ["e_recall@1", "c_recall@4", "nmi", "f1", "mAP_c"]] == ["R@1", "cR@4", "NMI", "F1", "mAP_c"]
