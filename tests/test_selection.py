"""Which epoch a "best" number comes from (``dmltui.selection``): val, last and test-max on hand-written
metrics.jsonl files, the default rule, the refusal of mixed runs, and how compare, report, the checkpoints of
inspect/export and tune finalize say what they chose.

Every expected number is read off the curves below by hand.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from conftest import dmltui, ok

from dmltui import compare as cmp
from dmltui import runs as run_ops
from dmltui import selection as sel
from dmltui.runs import open_store, record_from_run_dir
from engine.config.presets import resolve
from engine.embed import checkpoint_choice
from engine.rundir import RunDir

# Per run: config overrides and, per split, each metric's value at epochs 1, 2, 3, 4.
# "tv": its validation R@1 ties at epochs 2 and 3 (the earliest wins); test R@1 peaks at 3, test NMI at 4.
# "tv-map": selects by its first storage metric, MAP@R, whose validation best (epoch 3) is not R@1's (epoch 1).
# "plain": no validation split, the paper's setting.
RUNS = {
    "tv-s0": (["data.use_tv_split=true"], {
        "val": {"e_recall@1": [0.50, 0.70, 0.70, 0.60]},
        "test": {"e_recall@1": [0.40, 0.55, 0.65, 0.62], "nmi": [0.30, 0.35, 0.33, 0.40]},
    }),
    "tv-map-s1": (["data.use_tv_split=true", 'eval.metrics=["e_recall@1", "nmi", "map_at_r"]',
                   'eval.storage_metrics=["map_at_r"]'], {
        "val": {"e_recall@1": [0.90, 0.10, 0.10, 0.10], "map_at_r": [0.20, 0.10, 0.30, 0.25]},
        "test": {"e_recall@1": [0.50, 0.60, 0.45, 0.52], "nmi": [0.31, 0.32, 0.33, 0.34]},
    }),
    "plain-s2": ([], {
        "test": {"e_recall@1": [0.30, 0.50, 0.40, 0.45], "nmi": [0.20, 0.25, 0.22, 0.21]},
    }),
}


def write_run(root: Path, name: str, overrides: list[str], curves: dict[str, dict[str, list[float]]]) -> Path:
    seed = int(name.rsplit("-s", 1)[1])
    run_dir = root / name
    run_dir.mkdir(parents=True)
    rd = RunDir(run_dir)
    rd.write_config(resolve("margin-b06-d", [f"run.seed={seed}", *overrides]).to_toml())
    rd.update_status(state="finished", epoch=4, epochs=4, host="elsewhere", pid=None)
    (run_dir / "manager.json").write_text(json.dumps({"id": f"id-{name}", "name": name, "preset": "margin-b06-d",
                                                      "tags": [], "created_at": "2024-01-01T00:00:00+00:00"}))
    for split, metrics in curves.items():  # the untrained network beats everything, and is never selected
        rd.append_metrics({"kind": "eval", "epoch": 0, "split": split, "metrics": dict.fromkeys(metrics, 0.99)})
    for epoch in range(1, 5):
        rd.append_metrics({"kind": "train", "epoch": epoch, "split": "train", "metrics": {"loss": 1.0 / epoch}})
        for split, metrics in curves.items():
            rd.append_metrics({"kind": "eval", "epoch": epoch, "split": split,
                               "metrics": {metric: values[epoch - 1] for metric, values in metrics.items()}})
    return run_dir


@pytest.fixture
def stored(tmp_path) -> dict[str, dict]:
    records = {name: record_from_run_dir(write_run(tmp_path / "runs", name, *spec)) for name, spec in RUNS.items()}
    open_store().insert(*records.values())
    return records


def one_error_line(result) -> str:
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


# --------------------------------------------------------------------------- the three selections


def test_val_last_and_test_max_of_a_metrics_file(stored):
    lines = RunDir(stored["tv-s0"]["run_dir"]).read_metrics()
    val = sel.select_epoch(lines, "val")
    assert (val.epoch, val.selected_by) == (2, "val/e_recall@1")  # 0.70 at epochs 2 and 3: the earlier
    assert val.metrics["e_recall@1"] == {"value": 0.55, "epoch": 2} and val.metrics["nmi"] == {"value": 0.35, "epoch": 2}
    last = sel.select_epoch(lines, "last")
    assert last.epoch == 4 and last.metrics["e_recall@1"]["value"] == 0.62 and last.metrics["nmi"]["value"] == 0.40
    test_max = sel.select_epoch(lines, "test-max")  # each metric at its own epoch, epoch 0 left out
    assert test_max.epoch is None
    assert test_max.metrics["e_recall@1"] == {"value": 0.65, "epoch": 3} and test_max.metrics["nmi"] == {"value": 0.40,
                                                                                                       "epoch": 4}
    on_val = sel.select_epoch(lines, "val", split="val")  # the validation split's own values at that epoch
    assert on_val.metrics["e_recall@1"] == {"value": 0.70, "epoch": 2}

    by_map = sel.select_epoch(RunDir(stored["tv-map-s1"]["run_dir"]).read_metrics(), "val", selector="map_at_r")
    assert by_map.epoch == 3 and by_map.metrics["e_recall@1"]["value"] == 0.45
    plain = RunDir(stored["plain-s2"]["run_dir"]).read_metrics()
    assert sel.select_epoch(plain, "val") is None
    with pytest.raises(sel.UnknownSelection, match="'best' is not one of val, last, test-max"):
        sel.select_epoch(plain, "best")


def test_a_stored_run_selects_by_its_first_storage_metric(stored):
    assert sel.selector_of(stored["tv-map-s1"]) == "map_at_r" and sel.selector_of(stored["tv-s0"]) == "e_recall@1"
    chosen = sel.run_selection(stored["tv-map-s1"], "val")
    assert (chosen.epoch, chosen.selected_by) == (3, "val/map_at_r") and chosen.metrics["e_recall@1"]["value"] == 0.45
    assert sel.run_selection(stored["tv-map-s1"], "last").metrics["e_recall@1"] == {"value": 0.52, "epoch": 4}
    assert sel.run_selection(stored["tv-map-s1"], "test-max").metrics["e_recall@1"] == {"value": 0.60, "epoch": 2}
    assert [sel.has_validation(r) for r in stored.values()] == [True, True, False]
    with pytest.raises(sel.NoValidationSplit, match=r"plain-s2 \(id-plain-s2\)"):
        sel.run_selection(stored["plain-s2"], "val")


def test_the_default_rule_and_mixed_runs(stored):
    tv, tv_map, plain = stored["tv-s0"], stored["tv-map-s1"], stored["plain-s2"]
    assert sel.choose_selection([tv, tv_map]) == ("val", None)
    assert sel.choose_selection([plain]) == ("test-max", None)
    selection, note = sel.choose_selection([tv, plain])  # mixed: test-max for every run, and said so
    assert selection == "test-max" and note.startswith("1 of 2 runs logged no validation split")
    assert sel.choose_selection([tv, plain], "last") == ("last", None)
    with pytest.raises(sel.NoValidationSplit, match="1 run.*plain-s2"):
        sel.choose_selection([tv, plain], "val")
    with pytest.raises(sel.UnknownSelection):
        sel.choose_selection([tv], "max")
    assert sel.selection_choices([tv, tv_map]) == ["val", "last", "test-max"]
    assert sel.selection_choices([tv, plain]) == ["last", "test-max"]


def test_rows_say_their_selection_and_epoch_and_tables_label_it(stored):
    both = [stored["tv-s0"], stored["tv-map-s1"]]
    rows = cmp.comparison(both, ["e_recall@1", "nmi"])  # the default: val, every run has a validation split
    assert [(r["selection"], r["selected_epoch"], r["selected_by"]) for r in rows] == [
        ("val", 2, "val/e_recall@1"), ("val", 3, "val/map_at_r")]
    assert rows[0]["metrics"]["e_recall@1"] == {"value": 0.55, "epoch": 2}
    assert rows[1]["metrics"]["nmi"] == {"value": 0.33, "epoch": 3}
    note = cmp.to_table_rows(rows).note
    assert note == ("selection val: the test metrics at the epoch of each run's best validation R@1 / MAP@R (nothing "
                    "about the test split chose it)")
    assert cmp.to_markdown(rows).endswith(f"\n\n{note}\n") and f"% {note}" in cmp.to_latex(rows)

    last = cmp.comparison(both, ["e_recall@1"], selection="last")
    assert [(r["selection"], r["selected_epoch"], r["metrics"]["e_recall@1"]["value"]) for r in last] == [
        ("last", 4, 0.62), ("last", 4, 0.52)]
    paper = cmp.comparison(both, ["e_recall@1"], selection="test-max")
    assert [(r["selected_epoch"], r["metrics"]["e_recall@1"]) for r in paper] == [
        (None, {"value": 0.65, "epoch": 3}), (None, {"value": 0.60, "epoch": 2})]
    assert "the 2020 paper's protocol" in cmp.to_table_rows(paper).note and "optimistic" in cmp.to_table_rows(paper).note

    [group] = cmp.group_summary(both, "preset", ["e_recall@1"])  # one preset: both runs in one group
    assert group["selection"] == "val" and group["selected_by"] == ["val/e_recall@1", "val/map_at_r"]
    assert group["metrics"]["e_recall@1"]["mean"] == pytest.approx(0.50) and group["best_epoch"] == 2.5
    assert cmp.to_table_rows([group]).headers[-1] == "Epoch (val)"
    [mixed] = cmp.group_summary(list(stored.values()), "preset", ["e_recall@1"])  # the default falls back for all
    assert mixed["selection"] == "test-max" and mixed["metrics"]["e_recall@1"]["values"] == [0.65, 0.60, 0.50]
    with pytest.raises(sel.NoValidationSplit):
        cmp.group_summary(list(stored.values()), "preset", ["e_recall@1"], selection="val")


# --------------------------------------------------------------------------- the CLI


def test_compare_select_through_the_entry_point(stored):
    data = json.loads(ok("compare", "id-tv-s0", "id-tv-map-s1", "-m", "e_recall@1", "--json").stdout)
    assert [(r["selection"], r["selected_epoch"], r["metrics"]["e_recall@1"]["value"]) for r in data] == [
        ("val", 2, 0.55), ("val", 3, 0.45)]
    last = json.loads(ok("compare", "id-tv-s0", "id-tv-map-s1", "-m", "e_recall@1", "--select", "last", "--json").stdout)
    assert [(r["selection"], r["selected_epoch"], r["metrics"]["e_recall@1"]["value"]) for r in last] == [
        ("last", 4, 0.62), ("last", 4, 0.52)]
    table = ok("compare", "id-tv-s0", "id-tv-map-s1", "-m", "e_recall@1").stdout
    assert "55.00 (2)" in table and "45.00 (3)" in table
    assert table.rstrip().endswith("selection val: the test metrics at the epoch of each run's best validation "
                                   "R@1 / MAP@R (nothing about the test split chose it)")

    mixed = ok("compare", "id-tv-s0", "id-plain-s2", "-m", "e_recall@1", "-f", "csv")
    assert "note: 1 of 2 runs logged no validation split" in mixed.stderr
    assert mixed.stdout.splitlines()[1].endswith(",0.65,3,test-max,")  # value, its own epoch, no selected epoch
    refused = one_error_line(dmltui("compare", "id-tv-s0", "id-plain-s2", "--select", "val"))
    assert refused == ("error: --select val: selection 'val' needs a validation split, and 1 run(s) logged none "
                       "(data.use_tv_split or data.folds): plain-s2 (id-plain-s2); use --select last or test-max")
    grouped = dmltui("compare", "--group-by", "preset", "--select", "val")
    assert "plain-s2 (id-plain-s2)" in one_error_line(grouped)
    bad = one_error_line(dmltui("compare", "id-tv-s0", "--select", "best"))
    assert bad == "error: --select best: selection 'best' is not one of val, last, test-max"


def test_report_keeps_the_paper_protocol_labelled_and_can_print_val(stored, tmp_path):
    out = tmp_path / "report"
    result = ok("report", "--out", str(out), "--json")
    assert json.loads(result.stdout)["selection"] == "test-max"  # one run has no validation split
    assert "1 of 3 runs logged no validation split" in result.stderr
    md = (out / "table_cub200.md").read_text()
    assert "| margin-b06-d | 3 | 58.33 ± 6.24 |" in md  # test-max R@1: 0.65, 0.60, 0.50
    assert md.rstrip().endswith("(the 2020 paper's protocol; chosen on the numbers it reports, so optimistic)")
    assert json.loads((out / "report.json").read_text())["selection"] == "test-max"

    refused = dmltui("report", "--out", str(tmp_path / "val"), "--select", "val")
    assert "plain-s2" in one_error_line(refused) and not (tmp_path / "val").exists()

    ok("runs", "rm", "id-plain-s2", "--yes")
    honest = tmp_path / "honest"
    assert json.loads(ok("report", "--out", str(honest), "--json").stdout)["selection"] == "val"
    md = (honest / "table_cub200.md").read_text()
    assert "| margin-b06-d | 2 | 50.00 ± 5.00 |" in md and "| Epoch (val) |" in md and "| 2.5 |" in md
    assert "selection val: the test metrics at the epoch of each run's best validation" in md
    paper = tmp_path / "paper"
    assert json.loads(ok("report", "--out", str(paper), "--select", "test-max", "--json").stdout)["selection"] == "test-max"
    assert "| margin-b06-d | 2 | 62.50 ± 2.50 |" in (paper / "table_cub200.md").read_text()  # 0.65, 0.60


def test_the_tui_compare_screen_starts_on_the_default_and_s_steps_through_the_selections(stored):
    from dmltui.tui.app import DmlTuiApp
    from dmltui.tui.screens.compare import CompareScreen

    app = DmlTuiApp(poll_seconds=0.2)
    shown: list[tuple[str, str, str]] = []

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            deadline = time.monotonic() + 20
            while not (isinstance(app.screen, CompareScreen) and app.screen.rows_by_run):
                assert time.monotonic() < deadline, "the compare screen never read the runs"
                if not isinstance(app.screen, CompareScreen) and app.run_record("id-tv-map-s1") is not None:
                    app.push_screen(CompareScreen(["id-tv-s0", "id-tv-map-s1"]))
                await pilot.pause(0.05)
            screen = app.screen
            for _ in range(4):
                table = screen.query_one("#compare-runs")
                shown.append((screen.selection, str(table.get_cell("best R@1 (epoch)", "id-tv-s0")),
                              str(screen.query_one("#compare-summary").render())))
                await pilot.press("s")

    asyncio.run(main())
    assert [(selection, cell) for selection, cell, _ in shown] == [
        ("val", "55.00 (2)"), ("last", "62.00 (4)"), ("test-max", "65.00 (3)"), ("val", "55.00 (2)")]
    assert "best: val (s)" in shown[0][2] and "best: test-max, optimistic (s)" in shown[2][2]


# --------------------------------------------------------------------------- tune finalize


def test_finalize_trains_the_mean_best_fold_epoch_and_counts_the_seeds_that_finished(tiny, isolated_env, monkeypatch):
    """A study whose best trial's two folds peaked (validation MAP@R) at epochs 2 and 3 (the later of a tie is not
    taken): the finalized runs train round-half-up(2.5) = 3 epochs. Of three seeds, one crashes: n = 2/3."""
    import optuna

    from dmltui.tune import study as studies
    from dmltui.tune import tuner

    fold_ids = []
    for fold, curve in enumerate(([0.10, 0.40, 0.30, 0.20], [0.10, 0.20, 0.50, 0.50])):
        rd = RunDir(isolated_env / "runs" / f"fold-{fold}")
        rd.path.mkdir(parents=True)
        for epoch, value in enumerate(curve, start=1):
            rd.append_metrics({"kind": "eval", "epoch": epoch, "split": "val", "metrics": {"map_at_r": value}})
        fold_ids.append(f"fold-{fold}")
        open_store().insert({"id": fold_ids[-1], "name": f"s1-t0-f{fold}-s0", "state": "finished", "run_dir": str(rd.path),
                             "best": {}, "tags": ["tuning"], "created_at": "2024-01-01T00:00:00+00:00"})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s1", storage=studies.storage("s1"), direction="maximize")
    spec = studies.StudySpec(name="s1", presets=[tiny], dataset="digits", space=["optim.lr=loguniform(1e-5,1e-2)"],
                             trials=1, folds=2, metric="map_at_r")
    study.set_user_attr(studies.SPEC_ATTR, spec.to_dict())
    study.add_trial(optuna.trial.create_trial(
        params={"optim.lr": 1e-3}, distributions={"optim.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)},
        value=0.45, user_attrs={"runs": fold_ids}))

    assert tuner.searched_epochs(study.best_trial, "map_at_r")[0] == 3
    planned_epochs = []

    def prepared_not_started(planned, **_):  # the runs' directories and records, without training them
        planned_epochs.extend((p.resolved.config.optim.epochs, p.resolved.config.eval.every) for p in planned)
        return run_ops.prepare_runs([(p.resolved, p.name) for p in planned], run_tags=[list(p.tags) for p in planned])

    monkeypatch.setattr(tuner.launching, "start_runs", prepared_not_started)
    records, chosen = tuner.finalize("s1", "0-2", tuner.Target())
    assert planned_epochs == [(3, 3)] * 3
    assert chosen == {"epochs": 3, "rule": "the mean over trial 0's 2 folds of the epoch of their best validation "
                                           "map_at_r (2, 3: mean 2.5)"}
    for record, (state, value) in zip(records, [("finished", 0.50), ("finished", 0.60), ("crashed", None)], strict=True):
        best = {"test/map_at_r": {"value": value, "epoch": 3}} if value is not None else {}
        open_store().modify(record["id"], lambda r, state=state, best=best: {**r, "state": state, "best": best})

    status = json.loads(ok("tune", "status", "s1", "--json").stdout)["final"]
    assert (status["finished"], status["launched"], status["values"]) == (2, 3, [0.50, 0.60])
    assert status["mean"] == pytest.approx(0.55) and status["epochs"] == chosen
    shown = " ".join(ok("tune", "status", "s1").stdout.split())  # rich wraps piped lines at 80 columns
    assert ("finalized: test map_at_r x100 55.00 ± 5.00, n = 2/3 seeds (1 crashed); 3 epochs: the mean over trial 0's "
            "2 folds of the epoch of their best validation map_at_r (2, 3: mean 2.5)") in shown

    # a fold run gone from the store: the config's epochs, and why
    open_store().remove("fold-1")
    assert tuner.searched_epochs(study.best_trial, "map_at_r") == (
        None, "fold run fold-1 of trial 0 is no longer in the store")


# --------------------------------------------------------------------------- the best checkpoint


def test_a_best_checkpoint_says_which_split_chose_it():
    assert checkpoint_choice("/r/checkpoints/best_test_e_recall@1.pt") == {"split": "test", "metric": "e_recall@1"}
    assert checkpoint_choice("best_val_map_at_r.pt") == {"split": "val", "metric": "map_at_r"}
    assert checkpoint_choice("last.pt") is None and checkpoint_choice("best_test_.pt") is None
    assert sel.checkpoint_note(None) is None
    assert sel.checkpoint_note({"split": "val", "metric": "map_at_r"}) == "chosen on the val split by its best MAP@R"
    assert sel.checkpoint_note({"split": "test", "metric": "e_recall@1"}) == (
        "chosen on the test split by its best R@1: the run had no validation split, so this is model selection on "
        "test data, which is optimistic")
