"""``dmltui compare`` and ``dmltui report`` on hand-written run directories (no training).

Every number checked here is computed by hand from the curves below: each run's best
test epoch per metric (max over epochs >= 1), then mean and population std (ddof=0)
over the seeds of a group, the paper's protocol (reference inventory §11).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import dmltui, ok
from PIL import Image

from dmltui import compare as cmp
from dmltui.report import build_report, rho_at_best_epoch
from dmltui.runs import open_store, record_from_run_dir
from engine.config.presets import resolve
from engine.rundir import RunDir

# (name, preset, seed, dataset, state, test R@1 per epoch 1..3, train rho_spectrum@2 per epoch)
RUNS = [
    ("margin-b06-d-s0", "margin-b06-d", 0, "cub200", "finished", [0.60, 0.55, 0.50], [0.20, 0.25, 0.30]),
    ("margin-b06-d-s1", "margin-b06-d", 1, "cub200", "finished", [0.50, 0.62, 0.58], [0.22, 0.24, 0.26]),
    ("margin-b06-d-s2", "margin-b06-d", 2, "cub200", "finished", [0.52, 0.56, 0.64], [0.18, 0.21, 0.23]),
    ("margin-b06-d-s3", "margin-b06-d", 3, "cub200", "stopped", [0.90, 0.99, 0.95], [0.10, 0.10, 0.10]),
    ("triplet_s0", "triplet-d", 0, "cub200", "finished", [0.55, 0.58, 0.57], [0.35, 0.33, 0.34]),
    ("triplet_s1", "triplet-d", 1, "cub200", "finished", [0.59, 0.57, 0.56], [0.36, 0.30, 0.31]),
    ("triplet_s2", "triplet-d", 2, "cub200", "finished", [0.54, 0.55, 0.56], [0.40, 0.39, 0.38]),
    ("ms-s0", "multisimilarity", 0, "cub200", "finished", [0.57, 0.61, 0.60], [0.15, 0.16, 0.17]),
    ("ms-s1", "multisimilarity", 1, "cub200", "finished", [0.59, 0.58, 0.60], [0.14, 0.19, 0.12]),
    ("margin-cars-s0", "margin-b06-d", 0, "cars196", "finished", [0.70, 0.75, 0.72], [0.25, 0.26, 0.27]),
]
NMI = {"margin-b06-d-s0": [0.66, 0.68, 0.67], "margin-b06-d-s1": [0.65, 0.66, 0.69], "margin-b06-d-s2": [0.64, 0.70, 0.66]}


def epoch_metrics(name: str, epoch: int, r1: float) -> dict:
    """Every test metric of one epoch; NMI peaks at other epochs than R@1 for the margin runs."""
    return {
        "e_recall@1": r1,
        "e_recall@2": r1 + 0.08 + 0.01 * (epoch % 2),
        "e_recall@4": r1 + 0.15 - 0.005 * epoch,
        "nmi": NMI[name][epoch - 1] if name in NMI else 0.5 + 0.3 * r1,
        "f1": 0.3 + 0.4 * r1 + 0.01 * (epoch % 2),
        "mAP_c": 0.2 + 0.5 * r1 - 0.005 * epoch,
    }


def write_run(root: Path, name, preset, seed, dataset, state, r1s, rhos, *, with_rho=True, tags=()) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    rd = RunDir(run_dir)
    rd.write_config(resolve(preset, [f"run.seed={seed}", f"data.dataset={dataset}"]).to_toml())
    rd.update_status(state=state, epoch=len(r1s), epochs=len(r1s), host="elsewhere", pid=None)
    (run_dir / "manager.json").write_text(json.dumps({"id": f"id-{name}", "name": name, "preset": preset,
                                                      "tags": list(tags), "created_at": "2024-01-01T00:00:00+00:00"}))
    rd.append_metrics({"kind": "eval", "epoch": 0, "split": "test", "metrics": epoch_metrics(name, 1, 0.99)})  # never best
    for epoch, (r1, rho) in enumerate(zip(r1s, rhos, strict=True), start=1):
        rd.append_metrics({"kind": "train", "epoch": epoch, "split": "train", "metrics": {"loss": 1.0 / epoch}})
        rd.append_metrics({"kind": "eval", "epoch": epoch, "split": "test", "metrics": epoch_metrics(name, epoch, r1)})
        train = {"e_recall@1": 0.9, **({"rho_spectrum@2": rho} if with_rho else {})}
        rd.append_metrics({"kind": "eval", "epoch": epoch, "split": "train", "metrics": train})
    return run_dir


@pytest.fixture
def run_dirs(tmp_path) -> list[Path]:
    return [write_run(tmp_path / "runs", *spec) for spec in RUNS]


@pytest.fixture
def stored(run_dirs) -> dict[str, dict]:
    """The runs recorded in the (isolated) store, by name."""
    records = {record["name"]: record for record in map(record_from_run_dir, run_dirs)}
    open_store().insert(*records.values())
    return records


def row_of(rows: list[dict], group: str, dataset: str = "cub200") -> dict:
    [row] = [r for r in rows if r["group"] == group and r["dataset"] == dataset]
    return row


# --------------------------------------------------------------------------- pure functions


def test_mean_std_over_each_seeds_best_epoch_ddof_0(stored):
    rows = cmp.group_summary(list(stored.values()), "preset", ["e_recall@1", "nmi"])
    margin = row_of(rows, "margin-b06-d")
    stats = margin["metrics"]["e_recall@1"]
    assert margin["n"] == 3 and sorted(margin["seeds"]) == [0, 1, 2]  # the stopped seed 3 is left out
    assert sorted(stats["values"]) == pytest.approx([0.60, 0.62, 0.64])
    assert stats["mean"] == pytest.approx(0.62)
    assert stats["std"] == pytest.approx(np.sqrt(((0.02**2) * 2) / 3))  # ddof=0: 0.016330
    assert stats["std"] != pytest.approx(np.std([0.60, 0.62, 0.64], ddof=1))
    assert margin["best_epoch"] == pytest.approx(2.0)  # epochs 1, 2, 3 of R@1
    # not the last epoch, not the max of the mean curve
    curves = np.array([spec[5] for spec in RUNS[:3]])
    assert curves[:, -1].mean() == pytest.approx(0.5733, abs=1e-4)  # last epoch
    assert curves.mean(axis=0).max() == pytest.approx(0.5767, abs=1e-4)  # max of the mean curve
    # per metric: NMI's best epochs (2, 3, 2) are not R@1's
    assert margin["metrics"]["nmi"]["mean"] == pytest.approx(np.mean([0.68, 0.69, 0.70]))
    assert margin["metrics"]["nmi"]["epochs"] == [2, 3, 2]
    assert "62.00 $\\pm$ 1.63" in cmp.to_latex(rows)
    assert "62.00 ± 1.63" in cmp.to_markdown(rows)

    everything = row_of(cmp.group_summary(list(stored.values()), "preset", ["e_recall@1"], include_unfinished=True),
                        "margin-b06-d")
    assert everything["n"] == 4 and everything["metrics"]["e_recall@1"]["mean"] == pytest.approx((0.60 + 0.62 + 0.64 + 0.99) / 4)


def test_groups_by_preset_name_and_config_key_never_mix_datasets(stored):
    records = list(stored.values())
    by_preset = cmp.group_summary(records, "preset", ["e_recall@1"])
    assert [(r["dataset"], r["group"], r["n"]) for r in by_preset] == [
        ("cars196", "margin-b06-d", 1), ("cub200", "margin-b06-d", 3), ("cub200", "multisimilarity", 2),
        ("cub200", "triplet-d", 3)]
    by_name = cmp.group_summary(records, "name", ["e_recall@1"])
    assert {(r["dataset"], r["group"]) for r in by_name} == {
        ("cars196", "margin-cars"), ("cub200", "margin-b06-d"), ("cub200", "ms"), ("cub200", "triplet")}
    assert row_of(by_name, "triplet")["metrics"]["e_recall@1"]["mean"] == pytest.approx(np.mean([0.58, 0.59, 0.56]))
    by_loss = cmp.group_summary(records, "loss.name", ["e_recall@1"])
    assert [r["group"] for r in by_loss if r["dataset"] == "cub200"] == ["margin", "multisimilarity", "triplet"]
    assert cmp.strip_seed("a-b-s12") == "a-b" and cmp.strip_seed("a_s3") == "a" and cmp.strip_seed("seeds") == "seeds"
    with pytest.raises(cmp.UnknownGroupKey, match="loss.name"):
        cmp.group_summary(records, "loss.nme", ["e_recall@1"])


def test_differing_keys_flatten_config_and_compare_lists_as_values(stored):
    assert cmp.differing_keys([stored["margin-b06-d-s0"], stored["margin-b06-d-s1"]]) == ["run.seed"]
    keys = cmp.differing_keys([stored["margin-b06-d-s0"], stored["triplet_s1"]])
    assert {"loss.name", "run.seed"} <= set(keys) and "model.arch" not in keys
    records = [{"config": {"a": {"b": [1, 2]}, "c": 1, "d": True}}, {"config": {"a": {"b": [1, 2]}, "c": 2, "d": True}}]
    assert cmp.differing_keys(records) == ["c"]
    records[1]["config"]["a"]["b"] = [2, 1]
    records[1]["config"]["e"] = 0
    assert cmp.differing_keys(records) == ["a.b", "c", "e"]
    assert cmp.differing_keys(records[:1]) == []


def test_comparison_rows_and_missing_metric(stored):
    picked = [stored["margin-b06-d-s0"], stored["triplet_s1"]]
    rows = cmp.comparison(picked, ["e_recall@1", "nmi"])
    assert [r["id"] for r in rows] == ["id-margin-b06-d-s0", "id-triplet_s1"]
    assert rows[0]["config"]["loss.name"] == "margin" and rows[1]["config"]["loss.name"] == "triplet"
    assert rows[0]["metrics"]["e_recall@1"] == {"value": 0.60, "epoch": 1}
    assert rows[1]["metrics"]["nmi"] == {"value": pytest.approx(0.5 + 0.3 * 0.59), "epoch": 1}
    with pytest.raises(cmp.MetricNotLogged, match="'e_recall@8'.*e_recall@1"):
        cmp.comparison(picked, ["e_recall@8"])


# --------------------------------------------------------------------------- the CLI


def test_compare_group_by_every_format_through_the_entry_point(stored):
    args = ("compare", "--group-by", "preset", "--dataset", "cub200", "-m", "e_recall@1", "-m", "nmi")
    data = json.loads(ok(*args, "--format", "json").stdout)
    assert [r["group"] for r in data] == ["margin-b06-d", "multisimilarity", "triplet-d"]
    assert data[0]["metrics"]["e_recall@1"]["mean"] == pytest.approx(0.62)
    assert data[0]["metrics"]["e_recall@1"]["std"] == pytest.approx(0.0163299, abs=1e-7)
    assert json.loads(ok(*args, "--json").stdout) == data

    result = ok(*args, "--format", "csv")
    assert "unfinished" in result.stderr  # the stopped seed was left out, and said so
    parsed = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["group"] for r in parsed] == ["margin-b06-d", "multisimilarity", "triplet-d"]
    assert float(parsed[0]["e_recall@1_mean"]) == pytest.approx(0.62)
    assert float(parsed[0]["e_recall@1_std"]) == pytest.approx(0.0163299, abs=1e-7)
    assert int(parsed[0]["e_recall@1_n"]) == 3 and float(parsed[0]["best_epoch"]) == 2.0
    assert float(parsed[2]["nmi_mean"]) == pytest.approx(np.mean([0.5 + 0.3 * v for v in (0.58, 0.59, 0.56)]))

    latex = ok(*args, "--format", "latex").stdout
    assert "\\begin{tabular}" in latex and "\\pm" in latex
    assert "\\textbf{62.00 $\\pm$ 1.63}" in latex  # margin has the best R@1 and NMI
    assert "multisimilarity & 2 & 60.50 $\\pm$ 0.50" in latex

    markdown = ok(*args, "--format", "markdown").stdout
    assert "| Group | n | R@1 | NMI | Epoch (R@1) |" in markdown and "**62.00 ± 1.63**" in markdown

    assert "62.00 ± 1.63" in ok(*args).stdout  # the terminal table

    everything = json.loads(ok(*args, "--json", "--all-states").stdout)
    assert everything[0]["n"] == 4
    by_loss = json.loads(ok("compare", "--group-by", "loss.name", "--json", "-m", "e_recall@1").stdout)
    assert {(r["dataset"], r["group"]) for r in by_loss} == {("cars196", "margin"), ("cub200", "margin"),
                                                             ("cub200", "multisimilarity"), ("cub200", "triplet")}


def test_compare_ids_shows_differing_keys_and_best_epochs(stored):
    data = json.loads(ok("compare", "id-margin-b06-d-s2", "id-triplet_s0", "--json").stdout)
    assert set(data[0]["metrics"]) == {"e_recall@1", "e_recall@2", "e_recall@4", "nmi", "f1", "mAP_c"}  # paper defaults
    assert data[0]["metrics"]["e_recall@1"] == {"value": 0.64, "epoch": 3}
    assert data[1]["metrics"]["e_recall@1"] == {"value": 0.58, "epoch": 2}
    assert "loss.name" in data[0]["config"] and "model.arch" not in data[0]["config"]
    parsed = list(csv.DictReader(io.StringIO(ok("compare", "id-margin-b06-d-s2", "id-triplet_s0", "-f", "csv",
                                                 "-m", "e_recall@1").stdout)))
    assert parsed[0]["loss.name"] == "margin" and float(parsed[0]["e_recall@1"]) == 0.64
    assert parsed[0]["e_recall@1_epoch"] == "3"
    table = ok("compare", "id-margin-b06-d-s2", "id-triplet_s0", "-m", "e_recall@1").stdout
    assert "64.00 (3)" in table and "loss.name" in table


def test_compare_errors(stored, tmp_path):
    missing = dmltui("compare", "id-margin-b06-d-s0", "id-ms-s0", "--metric", "e_recall@8")
    assert missing.returncode == 2
    [line] = missing.stderr.strip().splitlines()
    assert "'e_recall@8'" in line and "e_recall@1" in line and "mAP_c" in line
    grouped = dmltui("compare", "--group-by", "preset", "--metric", "c_recall@1")
    assert grouped.returncode == 2 and "'c_recall@1'" in grouped.stderr
    unknown = dmltui("compare", "id-margin-b06-d-s0", "nope")
    assert unknown.returncode == 3 and "nope" in unknown.stderr and unknown.stdout == ""
    assert dmltui("compare").returncode == 2
    bad_key = dmltui("compare", "--group-by", "loss.nmae")
    assert bad_key.returncode == 2 and "loss.name" in bad_key.stderr
    assert dmltui("compare", "--group-by", "preset", "--tag", "nothing-has-it").returncode == 3
    no_split = dmltui("compare", "--group-by", "preset", "--split", "val")
    assert no_split.returncode == 2 and "splits with metrics: test, train" in no_split.stderr
    assert dmltui("report", "--group-by", "loss.nmae", "--out", str(tmp_path / "r")).returncode == 2
    assert not (tmp_path / "r").exists()


def test_compare_and_report_take_the_query_language(stored, tmp_path):
    where = "config.loss.name = margin and dataset = cub200 and best.test.e_recall@1 > 0.6"
    grouped = json.loads(ok("compare", "--group-by", "preset", "--where", where, "--json", "--all-states",
                            "-m", "e_recall@1").stdout)
    # seeds 1 (0.62), 2 (0.64) and the stopped 3 (0.99) pass; seed 0 (0.60) and the cars196 run do not
    assert [(r["group"], r["n"]) for r in grouped] == [("margin-b06-d", 3)]
    assert grouped[0]["metrics"]["e_recall@1"]["mean"] == pytest.approx(np.mean([0.62, 0.64, 0.99]))
    ids = ("id-margin-b06-d-s0", "id-margin-b06-d-s2", "id-triplet_s0")
    picked = json.loads(ok("compare", *ids, "--where", "config.loss.name = margin", "--json").stdout)
    assert [r["id"] for r in picked] == ["id-margin-b06-d-s0", "id-margin-b06-d-s2"]  # the ids, narrowed
    out = tmp_path / "report"
    report = json.loads(ok("report", "--out", str(out), "--where", "config.loss.name != margin", "--json").stdout)
    markdown = "".join(Path(f).read_text() for f in report["files"] if f.endswith(".md"))
    assert "triplet-d" in markdown and "multisimilarity" in markdown and "margin-b06-d" not in markdown
    for args in (("compare", "--group-by", "preset"), ("report", "--out", str(tmp_path / "bad"))):
        bad = dmltui(*args, "--where", "best.test.e_recall@1 >=")
        assert bad.returncode == 2 and bad.stdout == ""
        [line] = bad.stderr.strip().splitlines()
        assert line == "error: --where: at column 24: expected a value after '>=', got end of input"
    none = dmltui("compare", "--group-by", "preset", "--where", "tags has nothing-has-it")
    assert none.returncode == 3 and none.stderr.strip() == \
        "error: no runs match the filters (--where 'tags has nothing-has-it')"
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- the report


def expected_rho_points() -> dict[str, tuple[float, float]]:
    """Per cub200 preset, by hand: mean best R@1 and mean train rho at each seed's first best-R@1 epoch."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for _, preset, _, dataset, state, r1s, rhos in RUNS:
        if dataset == "cub200" and state == "finished":
            best = int(np.argmax(r1s))
            groups.setdefault(preset, []).append((r1s[best], rhos[best]))
    return {g: (float(np.mean([p[0] for p in v])), float(np.mean([p[1] for p in v]))) for g, v in groups.items()}


def test_report_writes_tables_and_figures(stored, tmp_path):
    out = tmp_path / "report"
    result = ok("report", "--out", str(out), "--json")
    files = {Path(p).name for p in json.loads(result.stdout)["files"]}
    assert files == {"table_cub200.tex", "table_cub200.md", "recall_vs_rho_cub200.png", "metric_correlation_cub200.png",
                     "table_cars196.tex", "table_cars196.md", "report.json"}
    assert all((out / name).is_file() for name in files)
    assert "cars196" in result.stderr and "skipped" in result.stderr  # one group: no figures, said so
    for name in ("recall_vs_rho_cub200.png", "metric_correlation_cub200.png"):
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 200

    tex = (out / "table_cub200.tex").read_text()
    assert "mAP" in tex and "mAP\\_c" not in tex and "\\textbf{62.00 $\\pm$ 1.63}" in tex and "Epoch (R@1)" in tex
    md = (out / "table_cub200.md").read_text()
    assert "| Group | n | R@1 | R@2 | F1 | mAP | NMI | Epoch (R@1) |" in md

    summary = json.loads((out / "report.json").read_text())
    rho = summary["datasets"]["cub200"]["rho"]
    expected = expected_rho_points()
    assert {p["group"]: (p["r1"], p["rho"]) for p in rho["points"]} == {
        g: (pytest.approx(v[0]), pytest.approx(v[1])) for g, v in expected.items()}
    x = [expected[p["group"]][1] for p in rho["points"]]
    y = [100 * expected[p["group"]][0] for p in rho["points"]]
    assert rho["r"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert rho["slope"] == pytest.approx(np.polyfit(x, y, 1)[0])
    corr = summary["datasets"]["cub200"]["correlation"]
    assert corr["metrics"] == ["e_recall@1", "e_recall@2", "e_recall@4", "nmi", "f1", "mAP_c"]
    assert np.allclose(np.diag(corr["matrix"]), 1.0)

    listed = ok("report", "--out", str(out), "--dataset", "cub200").stdout.splitlines()
    assert {Path(p).name for p in listed} == {"table_cub200.tex", "table_cub200.md", "recall_vs_rho_cub200.png",
                                              "metric_correlation_cub200.png", "report.json"}


def test_rho_is_read_at_the_best_r1_test_epoch(stored):
    assert rho_at_best_epoch(stored["margin-b06-d-s1"]) == 0.24  # best R@1 at epoch 2
    assert rho_at_best_epoch(stored["triplet_s1"]) == 0.36  # epoch 1
    assert rho_at_best_epoch({"best": {}, "run_dir": "/nonexistent"}) is None


def test_report_without_train_rho_skips_that_figure(tmp_path):
    records = []
    for spec in RUNS:
        records.append(record_from_run_dir(write_run(tmp_path / "runs", *spec, with_rho=False)))
    messages: list[str] = []
    paths = build_report(records, tmp_path / "out", messages=messages)
    names = {p.name for p in paths}
    assert "recall_vs_rho_cub200.png" not in names and "metric_correlation_cub200.png" in names
    assert not (tmp_path / "out" / "recall_vs_rho_cub200.png").exists()
    assert any("cub200" in m and "rho" in m and "skipped" in m for m in messages)
    # runs that logged only R@1: a table with that column, no figures, no crash
    thin = [{**r, "best": {"test/e_recall@1": r["best"]["test/e_recall@1"]}} for r in records]
    messages = []
    names = {p.name for p in build_report(thin, tmp_path / "thin", messages=messages)}
    assert names == {"table_cub200.tex", "table_cub200.md", "table_cars196.tex", "table_cars196.md", "report.json"}
    assert any("NMI" in m and "left out of the table" in m for m in messages)
    assert build_report([], tmp_path / "none", messages=messages)[-1].name == "report.json"


def test_report_with_nothing_finished_is_not_found(tmp_path):
    result = dmltui("report", "--out", str(tmp_path / "r"))
    assert result.returncode == 3 and "no finished runs" in result.stderr
