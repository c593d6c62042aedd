"""``dmltui plot parallel|scatter`` through the real entry point, on a hand-made learning-rate sweep: three rates, two
seeds each, whose test R@1 curves are written below (each run's best is read off them by hand)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from conftest import dmltui, ok

from dmltui.runs import open_store, record_from_run_dir
from engine.config.presets import resolve
from engine.rundir import RunDir

# learning rate -> test R@1 at epochs 1, 2, 3 for seed 0; seed 1 adds 0.01 everywhere. Test-max: the epoch-2 value.
CURVES = {1e-5: [0.30, 0.40, 0.30], 1e-4: [0.50, 0.60, 0.50], 1e-3: [0.40, 0.50, 0.40]}
BEST = {(lr, seed): curve[1] + 0.01 * seed for lr, curve in CURVES.items() for seed in (0, 1)}


def write_run(root: Path, number: int, lr: float, seed: int) -> Path:
    run_dir = root / f"lr{lr:g}-s{seed}"
    run_dir.mkdir(parents=True)
    rd = RunDir(run_dir)
    rd.write_config(resolve("margin-b06-d", [f"run.seed={seed}", f"optim.lr={lr}"]).to_toml())
    rd.update_status(state="finished", epoch=3, epochs=3, host="elsewhere", pid=None)
    tags = ["fast"] if lr >= 1e-4 else []
    (run_dir / "manager.json").write_text(json.dumps({"id": f"id{number}", "name": run_dir.name, "preset": "margin-b06-d",
                                                      "tags": tags, "created_at": "2024-01-01T00:00:00+00:00"}))
    for epoch, value in enumerate(CURVES[lr], 1):
        rd.append_metrics({"kind": "train", "epoch": epoch, "split": "train", "metrics": {"loss": 1.0 / epoch}})
        rd.append_metrics({"kind": "eval", "epoch": epoch, "split": "test",
                           "metrics": {"e_recall@1": value + 0.01 * seed, "nmi": 0.3}})
    return run_dir


@pytest.fixture
def sweep(tmp_path) -> dict[tuple[float, int], str]:
    """(lr, seed) -> run id, in the store."""
    ids, records = {}, []
    for number, (lr, seed) in enumerate(BEST):
        records.append(record_from_run_dir(write_run(tmp_path / "runs", number, lr, seed)))
        ids[(lr, seed)] = f"id{number}"
    open_store().insert(*records)
    return ids


def one_error_line(result, code: int = 2) -> str:
    assert result.returncode == code and result.stdout == "", (result.stdout, result.stderr)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in result.stderr
    return line.removeprefix("error: ")


def test_parallel_json_has_the_varied_key_and_the_metric_with_each_runs_value(sweep):
    data = json.loads(ok("plot", "parallel", "--json").stdout)
    assert [axis["key"] for axis in data["axes"]] == ["optim.lr", "test/e_recall@1"]  # the seed is no axis
    assert data["selection"] == "test-max" and data["left_out"] == 0  # no validation split: the paper's rule
    by_id = {run["id"]: i for i, run in enumerate(data["runs"])}
    lr_axis, metric_axis = data["axes"]
    assert lr_axis["scale"] == "log"  # 1e-5..1e-3 spans two decades
    for (lr, seed), run_id in sweep.items():
        assert lr_axis["values"][by_id[run_id]] == pytest.approx(lr)
        assert metric_axis["values"][by_id[run_id]] == pytest.approx(BEST[(lr, seed)])
    low, high = min(BEST.values()), max(BEST.values())
    assert metric_axis["positions"][by_id[sweep[(1e-4, 1)]]] == pytest.approx(1.0)  # the best run tops the axis
    assert metric_axis["positions"][by_id[sweep[(1e-3, 0)]]] == pytest.approx((0.50 - low) / (high - low))


def test_ranges_on_axes_narrow_the_lines(sweep):
    data = json.loads(ok("plot", "parallel", "--json", "--range", "optim.lr=5e-5:2e-3").stdout)
    assert sorted(run["id"] for run in data["runs"]) == sorted(sweep[(lr, s)] for lr in (1e-4, 1e-3) for s in (0, 1))
    assert data["runs_before_ranges"] == 6 and data["ranges"] == ["optim.lr=5e-5:2e-3"]
    both = json.loads(ok("plot", "parallel", "--json", "--range", "optim.lr=5e-5:2e-3",
                         "--range", "test/e_recall@1=0.55:").stdout)  # an open upper bound
    assert [run["id"] for run in both["runs"]] == [sweep[(1e-4, 0)], sweep[(1e-4, 1)]]
    text = ok("plot", "parallel", "--range", "optim.lr=1e-4").stdout  # a single value is a range of one
    assert "2 of 6 runs within optim.lr=1e-4" in text
    words = " ".join(text.split())  # the lines under the chart wrap at the terminal's width
    assert "axes, left to right (low to high): optim.lr 1e-05..0.001 (log) · test/e_recall@1 0.4..0.61" in words
    assert "selection test-max" in text and "\x1b[" not in text  # plain text into a pipe


def test_where_and_ids_choose_the_runs(sweep):
    data = json.loads(ok("plot", "parallel", "--json", "--where", "tags has fast").stdout)
    assert len(data["runs"]) == 4 and data["axes"][0]["values"].count(1e-5) == 0
    picked = json.loads(ok("plot", "parallel", "--json", sweep[(1e-5, 0)], sweep[(1e-3, 1)]).stdout)
    assert [run["id"] for run in picked["runs"]] == [sweep[(1e-5, 0)], sweep[(1e-3, 1)]]


def test_scatter_is_the_mean_and_sample_std_over_seeds(sweep, tmp_path):
    data = json.loads(ok("plot", "scatter", "optim.lr", "--json").stdout)
    assert data["selection"] == "test-max" and data["also_varying"] == []
    points = {point["value"]: point for point in data["points"]}
    assert sorted(points) == pytest.approx(sorted(CURVES))
    for lr in CURVES:
        point = next(p for value, p in points.items() if value == pytest.approx(lr))
        values = [BEST[(lr, 0)], BEST[(lr, 1)]]
        assert point["mean"] == pytest.approx(statistics.mean(values)) and point["n"] == 2
        assert point["std"] == pytest.approx(statistics.stdev(values))  # n - 1, as the paper's tables
    text = ok("plot", "scatter", "config.optim.lr").stdout
    assert "optim.lr = 0.0001: 0.6050 ± 0.0071 (n = 2)" in text
    png = tmp_path / "lr.png"
    result = ok("plot", "scatter", "optim.lr", "--png", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in result.stderr


def test_parallel_png_is_written_whole(sweep, tmp_path):
    png = tmp_path / "sweep.png"
    result = ok("plot", "parallel", "--png", str(png), "--range", "optim.lr=5e-5:")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png} (4 of 6 runs within optim.lr=5e-5:)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "runs", "sweep.png"]  # no temporary file left


def test_bad_input_is_one_line_with_exit_2_and_nothing_written(sweep, tmp_path):
    assert one_error_line(dmltui("plot", "parallel", "--range", "optim.lr=abc")) == \
        "--range optim.lr=abc: LOW:HIGH must be numbers on axis optim.lr (1e-05..0.001 (log))"
    assert one_error_line(dmltui("plot", "parallel", "--range", "optim.momentum=1:2")) == \
        "--range optim.momentum=1:2: no axis 'optim.momentum'; the axes are optim.lr, test/e_recall@1"
    assert one_error_line(dmltui("plot", "parallel", "--range", "optim.lr")) == \
        "--range optim.lr: not KEY=LOW:HIGH (e.g. optim.lr=1e-5:1e-4)"
    assert one_error_line(dmltui("plot", "parallel", "--range", "optim.lr=1:2")) == \
        "no run lies within optim.lr=1:2 (of 6 plotted)"
    assert one_error_line(dmltui("plot", "scatter", "optim.lrr")).startswith(
        "no run has config key 'optim.lrr'; nearest: optim.lr")
    assert one_error_line(dmltui("plot", "parallel", "--where", "tags has nope")) == \
        "no runs to plot: --where 'tags has nope' selects none of them"
    assert one_error_line(dmltui("plot", "parallel", "--where", "tags has")).startswith("--where: ")
    assert one_error_line(dmltui("plot", "parallel", "--metric", "map_at_r")) == \
        "metric 'map_at_r' was never logged on split 'test' by these runs; logged there: e_recall@1, nmi"
    assert one_error_line(dmltui("plot", "parallel", "--split", "val")) == \
        "no run logged split 'val'; splits with metrics: test, train"
    assert one_error_line(dmltui("plot", "parallel", "--select", "val")).startswith("--select val: ")
    assert one_error_line(dmltui("plot", "parallel", "nosuchid"), code=3) == \
        "no run with id 'nosuchid' (and no id starts with it)"
    for png in (tmp_path / "chart.jpg", tmp_path / "missing" / "chart.png"):
        assert one_error_line(dmltui("plot", "parallel", "--png", str(png))).startswith(f"--png {png}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "runs"]


def test_a_sweep_where_nothing_varies_says_so(tmp_path):
    records = [record_from_run_dir(write_run(tmp_path / "runs", seed, 1e-4, seed)) for seed in (0, 1)]
    open_store().insert(*records)
    assert one_error_line(dmltui("plot", "parallel")) == \
        "the 2 runs differ in no config key but their seed: nothing to put on axes"
