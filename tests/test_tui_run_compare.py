"""The TUI's run screen and compare screen (Pilot, snapshots) and the plain functions under them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import tables_settled

from dmltui import compare as cmp
from dmltui.testing import fake_metrics, fake_run
from dmltui.tui.compare_view import (
    CompareFiles,
    compare_split,
    curve_choices,
    default_export_path,
    export_text,
    group_choices,
    run_curves,
    run_labels,
    runs_table,
    write_export,
)
from dmltui.tui.run_view import (
    LOSS_KEY,
    RunFiles,
    clean_log_line,
    column_label,
    config_lines,
    config_text,
    curve_metrics,
    default_config,
    epoch_ticks,
    fold_records,
    header_text,
    last_metrics,
    resolved_config,
    row_cells,
    series,
    size_text,
    split_curves,
    table_columns,
)

CLOCK = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def app_for_tests(poll_seconds: float = 0.2):
    from dmltui.tui.app import DmlTuiApp

    return DmlTuiApp(poll_seconds=poll_seconds, clock=lambda: CLOCK)


async def wait_for(pilot, condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.05)


def run_app(app, scenario, size=(120, 40)):
    async def main():
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: bool(app.monitor.records))
            await pilot.pause(0.1)
            await scenario(pilot)

    asyncio.run(main())


def append_lines(path: Path, lines: list[str]) -> None:
    with open(path, "a") as handle:
        handle.write("".join(line + "\n" for line in lines))


@pytest.fixture
def two_runs(isolated_env):
    home = isolated_env
    return [
        fake_run(home, name="margin-s0", index=0, seed=0, ceiling=0.6),
        fake_run(home, name="triplet-s1", index=1, seed=1, loss="triplet", miner="semihard", ceiling=0.5),
    ]


# --------------------------------------------------------------------------- run view: plain functions


def test_columns_are_the_loss_then_each_splits_metrics_in_the_papers_order():
    rows = [{"epoch": 1, "train/loss": 0.5, "train/lr": 1e-5, "train/epoch_time_s": 3.0, "test/nmi": 0.3,
             "test/e_recall@1": 0.4, "val/e_recall@1": 0.5, "train/e_recall@1": 0.6, "test/zeta": 1.0}]
    columns = table_columns(rows)
    assert columns == [LOSS_KEY, "val/e_recall@1", "test/e_recall@1", "test/nmi", "test/zeta", "train/e_recall@1"]
    assert [column_label(c) for c in columns[:4]] == ["loss", "val R@1", "test R@1", "test NMI"]
    cells = row_cells({"epoch": 0, "test/e_recall@1": 0.123456}, columns)
    assert [c.plain for c in cells[:4]] == ["0", "-", "-", "0.1235"]


def test_fold_records_reports_only_the_epochs_that_changed():
    records = fake_metrics(3)
    rows: dict = {}
    assert fold_records(rows, records) == [0, 1, 2, 3]
    assert fold_records(rows, records) == []  # the same values again: nothing changed
    assert fold_records(rows, [{"kind": "eval", "epoch": 3, "split": "val", "metrics": {"nmi": 0.2, "spectrum": [1, 2]}}]) == [3]
    assert rows[3]["val/nmi"] == 0.2 and "val/spectrum" not in rows[3]
    assert fold_records(rows, [{"kind": "baseline", "epoch": None, "split": "test", "metrics": {"nmi": 0.1}}]) == []


def test_curves_series_ticks_and_last_values():
    rows = [{"epoch": 0, "test/nmi": 0.1}, {"epoch": 1, "train/loss": 0.9, "test/nmi": 0.3, "val/nmi": 0.35},
            {"epoch": 2, "train/loss": 0.7, "val/nmi": 0.4}]
    assert series(rows, LOSS_KEY) == ([1, 2], [0.9, 0.7])
    assert split_curves(rows, "nmi") == {"val": ([1, 2], [0.35, 0.4]), "test": ([0, 1], [0.1, 0.3])}
    assert curve_metrics(table_columns(rows)) == ["nmi"]
    assert last_metrics(rows, ["nmi", "f1"], "test") == {"nmi": {"value": 0.3, "epoch": 1}, "f1": None}
    assert epoch_ticks(range(0, 6)) == [0, 1, 2, 3, 4, 5]
    assert epoch_ticks(range(0, 21)) == [0, 5, 10, 15, 20]
    assert epoch_ticks(range(1, 151)) == [50, 100, 150]
    assert epoch_ticks([]) == []


def test_header_shows_state_progress_best_and_error(two_runs):
    record = {**two_runs[0], "state": "failed", "epoch": 3, "error": "loss became nan at epoch 3"}
    text = header_text(record, CLOCK).plain
    assert text.startswith("failed · epoch  3/10")
    assert f"best R@1 {record['best']['test/e_recall@1']['value']:.4f} (epoch 10)" in text
    assert "loss became nan at epoch 3" in text
    assert "best R@1 -" in header_text({"state": "queued", "epoch": 0, "epochs": 5}, CLOCK).plain


def test_config_lines_mark_changed_values_and_hide_unused_loss_parameters():
    defaults = default_config()
    config = json.loads(json.dumps(defaults))
    config["optim"]["lr"] = 0.001
    config["loss"]["triplet"]["margin"] = 0.5  # changed, though the run uses margin: shown
    lines = {f"{line.section}.{line.key}": line for line in config_lines(config, defaults)}
    assert lines["optim.lr"].default == json.dumps(defaults["optim"]["lr"])
    assert lines["optim.epochs"].default is None
    assert "loss.triplet.margin" in lines and "loss.contrastive.pos_margin" not in lines
    assert "loss.margin.beta" in lines  # the chosen loss's parameters
    text = config_text(config_lines(config, defaults)).plain
    assert "[optim]" in text and "* lr = 0.001" in text and "(default" in text
    assert config_text([]).plain == "(no config recorded)"


def test_resolved_config_is_the_run_dirs_config_toml(two_runs):
    record = two_runs[0]
    assert "config" not in record  # the store keeps no configs
    from_file = resolved_config(record)
    assert from_file["loss"]["name"] == "margin" and from_file["optim"]["epochs"] == 10
    assert resolved_config({"run_dir": "/nonexistent"}) == {}
    kept = {"optim": {"epochs": 3}}  # a run migrated from an older store whose run dir was gone keeps its config there
    assert resolved_config({"run_dir": "/nonexistent", "config": kept}) == kept


def test_small_formatters():
    assert size_text(512) == "512 B" and size_text(2048) == "2.0 KiB" and size_text(5 * 1024**3) == "5.0 GiB"
    assert clean_log_line("train  10%|#   \r train  50%|#####\r") == " train  50%|#####"
    assert clean_log_line("\x1b[32mok\x1b[0m done") == "ok done"


def test_run_files_read_only_what_was_appended(two_runs):
    run_dir = Path(two_runs[0]["run_dir"])
    files = RunFiles(run_dir)
    first = files.poll()
    assert first.rows_reset and [r["epoch"] for r in first.changed_rows] == list(range(11))
    assert first.logs["train.log"][0][0].startswith("epoch 1: loss") and "output.log" not in first.logs
    assert first.checkpoints == [] and first.absent_logs == ["output.log"]
    assert not files.poll()  # nothing new
    append_lines(run_dir / "metrics.jsonl", [json.dumps({"kind": "train", "epoch": 11, "split": "train",
                                                         "metrics": {"loss": 0.1}})])
    append_lines(run_dir / "train.log", ["epoch 11: loss 0.1000"])
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"x" * 2000)
    update = files.poll()
    assert not update.rows_reset and update.changed_rows == [{"epoch": 11, "train/loss": 0.1}]
    assert update.logs == {"train.log": (["epoch 11: loss 0.1000"], False)}
    assert [name for name, _size, _mtime in update.checkpoints] == ["last.pt"]
    # a resume rewrites metrics.jsonl: everything is read again
    records = fake_metrics(2)
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    update = files.poll()
    assert update.rows_reset and [r["epoch"] for r in update.changed_rows] == [0, 1, 2]


# --------------------------------------------------------------------------- compare view: plain functions


def test_runs_table_shows_differing_keys_best_and_last(two_runs):
    margin, triplet = two_runs
    metrics = cmp.default_metrics(two_runs)
    files = CompareFiles(two_runs)
    assert files.poll() and not files.poll()
    lasts = files.lasts(metrics, "test")
    rows = {row.label: row for row in runs_table(two_runs, metrics, "test", lasts)}
    assert rows["loss.name"].cells == ["margin", "triplet"] and rows["miner.name"].cells == ["distance", "semihard"]
    assert rows["run.seed"].cells == ["0", "1"]
    best = margin["best"]["test/e_recall@1"]
    assert rows["best R@1 (epoch)"].cells[0] == f"{100 * best['value']:.2f} ({best['epoch']})"
    assert rows["best R@1 (epoch)"].bold == {0}  # margin's ceiling is higher
    last = lasts[triplet["id"]]["e_recall@1"]
    assert last["epoch"] == 10 and rows["last R@1 (epoch)"].cells[1] == f"{100 * last['value']:.2f} (10)"
    assert rows["state"].cells == ["finished", "finished"] and rows["epoch"].cells == ["10/10", "10/10"]
    assert list(rows)[:2] == ["state", "epoch"]


def test_compare_choices_labels_and_curves(two_runs, isolated_env):
    assert compare_split(two_runs) == "test"
    assert group_choices(two_runs) == ["preset", "name", "loss.name", "miner.name", "run.seed"]
    assert curve_choices(["e_recall@1", "nmi"], "test") == ["test/e_recall@1", "test/nmi", LOSS_KEY]
    twin = fake_run(isolated_env, name="margin-s0", index=5, seed=3)
    labels = run_labels([two_runs[0], twin])
    assert labels[twin["id"]] == f"margin-s0 {twin['id']}" and run_labels(two_runs)[two_runs[1]["id"]] == "triplet-s1"
    files = CompareFiles(two_runs)
    files.poll()
    curves = run_curves(files.rows_by_run(), LOSS_KEY)
    assert set(curves) == {r["id"] for r in two_runs} and curves[two_runs[0]["id"]][0] == list(range(1, 11))


def test_export_uses_the_cli_formatters_and_writes_atomically(two_runs, tmp_path, monkeypatch):
    metrics = cmp.default_metrics(two_runs)
    rows = cmp.comparison(two_runs, metrics)
    assert export_text(rows, metrics, "csv") == cmp.to_csv(rows, metrics)
    assert export_text(rows, metrics, "markdown") == cmp.to_markdown(rows, metrics)
    assert export_text(rows, metrics, "latex") == cmp.to_latex(rows, metrics)
    with pytest.raises(ValueError):
        export_text(rows, metrics, "xlsx")
    assert [default_export_path(f) for f in ("csv", "markdown", "latex")] == [
        "./dmltui-compare.csv", "./dmltui-compare.md", "./dmltui-compare.tex"]
    monkeypatch.chdir(tmp_path)
    written = write_export("./out.md", "hello\n")
    assert written == tmp_path / "out.md" and written.read_text() == "hello\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    with pytest.raises(FileNotFoundError):
        write_export(tmp_path / "missing" / "out.md", "x")
    with pytest.raises(IsADirectoryError):
        write_export(tmp_path, "x")


# --------------------------------------------------------------------------- run screen (Pilot)


def test_enter_opens_the_run_with_its_metric_rows_and_config(two_runs):
    from dmltui.tui.screens.run import RunScreen

    app = app_for_tests()

    async def scenario(pilot):
        await pilot.press("enter")  # the newest run is first: triplet-s1
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.query_one("#epochs").row_count)
        screen = app.screen
        assert screen.run_id == two_runs[1]["id"]
        table = screen.query_one("#epochs")
        assert table.row_count == 11 and table.cursor_row == 10  # newest last, the cursor on it
        assert str(table.get_cell("10", "test/e_recall@1")) == f"{fake_metrics(10, seed=1, ceiling=0.5)[-1]['metrics']['e_recall@1']:.4f}"
        assert "finished" in str(screen.query_one("#run-header").render())
        await wait_for(pilot, lambda: "[optim]" in str(screen.query_one("#config-text").render()))
        await pilot.press("5")
        assert screen.query_one("TabbedContent").active == "checkpoints"
        assert "no checkpoints yet" in str(screen.query_one("#checkpoint-note").render())
        await pilot.press("escape")
        assert type(app.screen).__name__ == "RunsScreen"

    run_app(app, scenario)


def test_a_live_run_shows_new_epochs_and_log_lines_within_a_second(isolated_env):
    from dmltui.tui.screens.run import RunScreen

    record = fake_run(isolated_env, name="live", index=0, state="running", epochs=10, epoch=3, pid=os.getpid())
    run_dir = Path(record["run_dir"])
    app = app_for_tests()

    async def scenario(pilot):
        assert app.run_record(record["id"])["state"] == "running"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.query_one("#epochs").row_count == 4)
        screen = app.screen
        table, log = screen.query_one("#epochs"), screen.query_one("#train-log")
        assert log.line_count == 3 and "none" in str(screen.query_one("#output-log").border_title)
        new = [r for r in fake_metrics(4) if r["epoch"] == 4]
        append_lines(run_dir / "metrics.jsonl", [json.dumps(r) for r in new])
        append_lines(run_dir / "train.log", ["epoch 4: loss 0.5000", "epoch 4: evaluated"])
        await wait_for(pilot, lambda: table.row_count == 5 and log.line_count == 5, timeout=3)  # a bounded wait, no timing
        assert table.cursor_row == 4  # the cursor follows the newest epoch
        assert log.lines[-1] == "epoch 4: evaluated"
        assert str(table.get_cell("4", LOSS_KEY)) == f"{new[0]['metrics']['loss']:.4f}"
        await pilot.press("2")  # the curves tab: m cycles the metric
        assert screen.metric == "e_recall@1"
        await pilot.press("m")
        assert screen.metric == "e_recall@2"

    run_app(app, scenario)


def _reaped_sleeper() -> subprocess.Popen:
    """A stand-in for a training process that dies on SIGTERM; a thread reaps it so its pid really goes away."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    threading.Thread(target=process.wait, daemon=True).start()
    return process


def test_stop_from_the_run_screen_confirms_and_ends_stopped(isolated_env):
    from dmltui.tui.screens.dialogs import ConfirmScreen
    from dmltui.tui.screens.run import RunScreen

    process = _reaped_sleeper()
    try:
        record = fake_run(isolated_env, name="to-stop", index=0, state="running", epochs=10, epoch=2, pid=process.pid)
        app = app_for_tests()

        async def scenario(pilot):
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
            screen = app.screen
            await pilot.press("x")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_for(pilot, lambda: app.run_record(record["id"])["state"] == "stopped", timeout=15)
            await wait_for(pilot, lambda: str(screen.query_one("#run-header").render()).startswith("stopped"))
            assert app.screen is screen
            await pilot.press("x")  # no longer live: a warning, no dialog
            assert app.screen is screen

        run_app(app, scenario)
        assert process.poll() is not None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- compare screen (Pilot)


def test_compare_two_selected_runs_and_export_markdown(two_runs, tmp_path, monkeypatch):
    from dmltui.tui.screens.compare import CompareScreen, ExportScreen

    monkeypatch.chdir(tmp_path)
    app = app_for_tests()

    async def scenario(pilot):
        await pilot.press("space", "space", "c")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.rows_by_run)
        screen = app.screen
        table = screen.query_one("#compare-runs")
        assert [str(c.label) for c in table.columns.values()] == ["", "triplet-s1", "margin-s0"]
        assert [str(table.get_cell("loss.name", r["id"])) for r in two_runs] == ["margin", "triplet"]
        assert str(table.get_cell("last R@1 (epoch)", two_runs[0]["id"])).endswith("(10)")
        await pilot.press("2")
        groups = screen.query_one("#compare-groups")
        assert groups.row_count == 1  # both runs share the preset
        await pilot.press("g", "g")
        assert screen.group_by == "loss.name" and groups.row_count == 2
        await pilot.press("3", "m")
        assert screen.curve_key == "test/e_recall@2"
        await pilot.press("1", "e")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportScreen))
        await pilot.press("enter", "enter")  # markdown is the default format; enter on the path writes it
        await wait_for(pilot, lambda: (tmp_path / "dmltui-compare.md").exists())

    run_app(app, scenario)
    records = [app.run_record(r["id"]) for r in reversed(two_runs)]  # the runs screen's order: newest first
    metrics = cmp.default_metrics(records)
    assert (tmp_path / "dmltui-compare.md").read_text() == cmp.to_markdown(cmp.comparison(records, metrics), metrics)


def test_export_dialog_switches_format_and_path(two_runs, tmp_path, monkeypatch):
    from dmltui.tui.screens.compare import CompareScreen, ExportScreen

    monkeypatch.chdir(tmp_path)
    app = app_for_tests()

    async def scenario(pilot):
        app.push_screen(CompareScreen([r["id"] for r in two_runs]))
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.rows_by_run)
        await pilot.press("2", "e")  # on the groups tab the groups table is exported
        await wait_for(pilot, lambda: isinstance(app.screen, ExportScreen))
        await pilot.press("down")
        assert app.screen.query_one("#export-path").value == "./dmltui-compare.tex"
        await pilot.press("enter", "enter")
        await wait_for(pilot, lambda: (tmp_path / "dmltui-compare.tex").exists())
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportScreen))
        await pilot.press("escape")
        assert isinstance(app.screen, CompareScreen)

    run_app(app, scenario)
    text = (tmp_path / "dmltui-compare.tex").read_text()
    assert r"\begin{tabular}" in text and "margin-b12-d" in text and " $\\pm$ " in text


# --------------------------------------------------------------------------- snapshots


@pytest.fixture
def snapshot_runs(isolated_env):
    home = isolated_env
    return [
        fake_run(home, name="margin-s0", index=0, seed=0, epochs=20, ceiling=0.6),
        fake_run(home, name="triplet-s0", index=1, seed=0, epochs=20, loss="triplet", miner="semihard", ceiling=0.5,
                 overrides={"optim": {"lr": 0.0001, "epochs": 20}}),
        fake_run(home, name="margin-s1", index=2, seed=1, epochs=20, ceiling=0.62),
    ]


def open_run(run_id: str, *keys: str, rows: int = 21):
    async def run_before(pilot):
        from dmltui.tui.screens.run import RunScreen

        app = pilot.app
        await wait_for(pilot, lambda: app.run_record(run_id) is not None)
        app.push_screen(RunScreen(run_id))
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.query("#epochs")
                       and app.screen.query_one("#epochs").row_count == rows  # epochs 0..N
                       and "[" in str(app.screen.query_one("#config-text").render()))
        await pilot.press(*keys)
        await pilot.wait_for_scheduled_animations()  # the table scrolls to the newest epoch
        await tables_settled(pilot)

    return run_before


def open_compare(run_ids: list[str], *keys: str):
    async def run_before(pilot):
        from dmltui.tui.screens.compare import CompareScreen

        app = pilot.app
        await wait_for(pilot, lambda: all(app.run_record(r) is not None for r in run_ids))
        app.push_screen(CompareScreen(run_ids))
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.rows_by_run)
        await pilot.press(*keys)
        await tables_settled(pilot)

    return run_before


SIZES = {"80x24": (80, 24), "120x40": (120, 40)}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("tab", ["1", "2"])
def test_snapshot_run_screen(snap_compare, isolated_env, size, tab):
    # 12 epochs: every row fits at 80x24, so the picture does not hang on how far the table scrolled
    run = fake_run(isolated_env, name="triplet-s0", index=1, seed=0, epochs=12, loss="triplet", miner="semihard",
                   ceiling=0.5, overrides={"optim": {"lr": 0.0001, "epochs": 12}})
    assert snap_compare(app_for_tests(poll_seconds=0), terminal_size=SIZES[size],
                        run_before=open_run(run["id"], tab, rows=13))


def test_snapshot_run_screen_config(snap_compare, snapshot_runs):
    run_id = snapshot_runs[1]["id"]
    assert snap_compare(app_for_tests(poll_seconds=0), terminal_size=(80, 24),
                        run_before=open_run(run_id, "4", "pagedown"))


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_compare_screen(snap_compare, snapshot_runs, size):
    run_ids = [r["id"] for r in snapshot_runs]
    assert snap_compare(app_for_tests(poll_seconds=0), terminal_size=SIZES[size], run_before=open_compare(run_ids))


@pytest.mark.parametrize("tab", ["2", "3"])
def test_snapshot_compare_screen_groups_and_curves(snap_compare, snapshot_runs, tab):
    run_ids = [r["id"] for r in snapshot_runs]
    assert snap_compare(app_for_tests(poll_seconds=0), terminal_size=(80, 24), run_before=open_compare(run_ids, tab))
