"""Parallel coordinates and the metric-against-parameter scatter (dmltui.sweep_views), against direct computations on
hand-made runs."""

from __future__ import annotations

import math
import statistics

import pytest

from dmltui.sweep_views import NothingToPlot, make_axis, parallel, parallel_text, scatter, write_parallel_png


def run(i: int, lr: float, loss: str, seed: int, r1: float | None, margin: float = 0.2) -> dict:
    best = {} if r1 is None else {"test/e_recall@1": {"value": r1, "epoch": 5}}
    return {"id": f"r{i}", "name": f"run{i}", "state": "finished", "run_dir": f"/nowhere/r{i}", "best": best,
            "config": {"optim": {"lr": lr}, "loss": {"name": loss, "margin": margin}, "run": {"seed": seed},
                       "log": {"name": f"run{i}"}}}


SWEEP = [run(0, 1e-5, "margin", 0, 0.50), run(1, 1e-4, "margin", 0, 0.60), run(2, 1e-3, "triplet", 1, 0.55),
         run(3, 1e-4, "triplet", 1, 0.58), run(4, 1e-3, "margin", 2, None)]


def test_one_axis_per_varied_key_then_the_metric_with_each_runs_position():
    data = parallel(SWEEP, selection="test-max")
    assert [a.key for a in data.axes] == ["loss.name", "optim.lr", "test/e_recall@1"]  # no seed, no log.*
    assert data.left_out == 1 and [r["id"] for r in data.runs] == ["r0", "r1", "r2", "r3"]
    loss, lr, metric = data.axes
    assert loss.scale == "category" and loss.positions == [0.0, 0.0, 1.0, 1.0]
    assert lr.scale == "log"  # 1e-5..1e-3: two decades
    assert lr.positions == pytest.approx([(math.log10(v) + 5) / 2 for v in (1e-5, 1e-4, 1e-3, 1e-4)])
    assert metric.scale == "linear" and metric.values == [0.50, 0.60, 0.55, 0.58]
    assert metric.positions == pytest.approx([(v - 0.5) / 0.1 for v in (0.50, 0.60, 0.55, 0.58)])
    assert data.selection == "test-max" and data.to_json()["axes"][1]["ticks"][0] == [0.0, "1e-05"]


def test_a_range_on_an_axis_filters_the_runs():
    data = parallel(SWEEP, selection="test-max")
    assert data.within("optim.lr", 5e-5, 2e-4) == [1, 3]
    assert data.within("test/e_recall@1", 0.56, 1.0) == [1, 3]
    assert data.within("loss.name", 0.5, 1.0) == [2, 3]  # categorical: by position
    with pytest.raises(NothingToPlot, match="no axis 'optim.momentum'"):
        data.within("optim.momentum", 0, 1)


def test_axes_scale_by_their_values():
    assert make_axis("k", [1, 2, 3]).scale == "linear"
    assert make_axis("k", [0.0, 10.0, 1000.0]).scale == "linear"  # zero: no log
    assert make_axis("k", [True, False]).scale == "category"
    same = make_axis("k", [0.3, 0.3])
    assert same.positions == [0.5, 0.5]


def test_too_little_to_plot_says_why():
    with pytest.raises(NothingToPlot, match="need 2 runs or more, got 1"):
        parallel(SWEEP[:1], selection="test-max")
    with pytest.raises(NothingToPlot, match="1 of 2 runs logged test/e_recall@1"):
        parallel([SWEEP[0], SWEEP[4]], selection="test-max")
    seeds_only = [run(0, 1e-4, "margin", 0, 0.5), run(1, 1e-4, "margin", 1, 0.6)]
    with pytest.raises(NothingToPlot, match="differ in no config key but their seed"):
        parallel(seeds_only, selection="test-max")


def test_the_png_and_the_text_chart_are_drawn(tmp_path):
    data = parallel(SWEEP, selection="test-max")
    path = write_parallel_png(data, tmp_path / "parallel.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = parallel_text(data, width=80, height=20)
    lines = text.splitlines()
    assert len(lines) == 20 and all(len(line) <= 80 for line in map(_plain, lines))
    assert "e_recall@1 (test-max)" in _plain(text) and "lr" in _plain(text) and "name" in _plain(text)


def _plain(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_the_scatter_is_the_mean_and_std_over_the_runs_of_each_value():
    runs = [run(0, 1e-4, "margin", 0, 0.60), run(1, 1e-4, "margin", 1, 0.64), run(2, 1e-4, "margin", 2, 0.62),
            run(3, 1e-3, "margin", 0, 0.50), run(4, 1e-3, "margin", 1, None)]
    points, selection, others = scatter(runs, "optim.lr", selection="test-max")
    assert selection == "test-max" and others == []
    assert [(p.value, p.n) for p in points] == [(1e-4, 3), (1e-3, 1)]
    assert points[0].mean == pytest.approx(statistics.mean([0.60, 0.64, 0.62]))
    assert points[0].std == pytest.approx(statistics.stdev([0.60, 0.64, 0.62]))
    assert points[1].std is None and points[0].runs == ["r0", "r1", "r2"]
    mixed = [*runs, run(5, 1e-4, "triplet", 0, 0.7)]
    assert scatter(mixed, "optim.lr", selection="test-max")[2] == ["loss.name"]  # each point mixes losses: said
    with pytest.raises(NothingToPlot, match="no run has both config key 'optim.gamma'"):
        scatter(runs, "optim.gamma", selection="test-max")


def test_ranges_read_as_text_on_numeric_and_categorical_axes():
    from dmltui.axis_ranges import BadRange, axis_range, narrowed, split_option, within_all

    data = parallel(SWEEP, selection="test-max")
    assert split_option("model.arch=timm:vit_s16.dino") == ("model.arch", "timm:vit_s16.dino")
    margin = axis_range(data, "loss.name", "margin")  # one value of a categorical axis
    assert within_all(data, [margin]) == [0, 1]
    assert within_all(data, [axis_range(data, "loss.name", "margin:triplet")]) == [0, 1, 2, 3]
    assert within_all(data, [axis_range(data, "loss.name", ":margin")]) == [0, 1]  # an open bound
    both = [margin, axis_range(data, "optim.lr", "5e-5:")]
    assert within_all(data, both) == [1]
    shown = narrowed(data, [1])
    assert [r["id"] for r in shown.runs] == ["r1"] and shown.axes[1].positions == [data.axes[1].positions[1]]
    assert shown.axes[1].ticks == data.axes[1].ticks  # a line stays where it was
    for key, bounds, message in [
        ("loss.name", "contrastive", "neither a value of axis loss.name nor LOW:HIGH of its values (margin, triplet)"),
        ("loss.name", "triplet:margin", "'triplet' comes after 'margin' on axis loss.name"),
        ("optim.lr", "1e-3:1e-5", "LOW must not be above HIGH"),
        ("optim.lr", "nan", "LOW must not be above HIGH"),
    ]:
        with pytest.raises(BadRange, match=message.replace("(", r"\(").replace(")", r"\)")):
            axis_range(data, key, bounds)
    with pytest.raises(BadRange, match="not KEY=LOW:HIGH"):
        split_option("=1:2")
