"""The TUI's runs screen, help and palette (Pilot), and the polling logic under it (plain functions)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import tables_settled

from dmltui import runs as run_ops
from dmltui.listing import duration_seconds, matches, parse_filter, sort_runs
from dmltui.monitor import FileTail, RunsMonitor, epoch_rows
from dmltui.store import RunStore
from dmltui.testing import fake_run
from dmltui.tui.format import duration_text, progress_text, run_cells, started_text
from dmltui.workspace import table_columns

CLOCK = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def app_for_tests(**kwargs):
    from dmltui.tui.app import DmlTuiApp

    return DmlTuiApp(poll_seconds=kwargs.pop("poll_seconds", 0.1), clock=lambda: CLOCK, **kwargs)


def run_app(app, scenario, size=(120, 40)):
    async def main():
        async with app.run_test(size=size) as pilot:
            await pilot.pause(0.3)
            await scenario(pilot)

    asyncio.run(main())


async def wait_for(pilot, condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.1)


@pytest.fixture
def three_runs(isolated_env):
    home = isolated_env
    return [
        fake_run(home, name="margin-s0", index=0, seed=0, tags=["paper"], ceiling=0.6),
        fake_run(home, name="triplet-s0", index=1, seed=1, loss="triplet", miner="semihard", ceiling=0.5, dataset="cars196"),
        fake_run(home, name="npair-s0", index=2, seed=2, loss="npair", miner="npair", state="failed", epoch=3, ceiling=0.4),
    ]


def sleeper() -> subprocess.Popen:
    """A process that stands in for a training run: it dies on SIGTERM like one would."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)


# --------------------------------------------------------------------------- filter, sort, formatting


def test_parse_filter_splits_fields_from_words():
    assert parse_filter("state:running,queued tag:paper margin cub") == {
        "states": ["running", "queued"], "tag": "paper", "text": "margin cub"}
    assert parse_filter("state:failed state:crashed") == {"states": ["failed", "crashed"]}
    assert parse_filter("foo:bar") == {"text": "foo:bar"}  # not a field: free text
    assert parse_filter("") == {}


def test_matches_needs_every_word_anywhere(three_runs):
    margin, triplet, _npair = three_runs
    assert matches(triplet, text="triplet cars196")
    assert not matches(margin, text="triplet cars196")
    assert matches(margin, text="PAPER")  # tags, case-insensitive
    assert [r["name"] for r in three_runs if matches(r, states=["failed"])] == ["npair-s0"]


def test_sort_runs_by_metric_puts_missing_values_last(three_runs):
    margin, triplet, npair = three_runs
    no_metric = {**npair, "best": {}}
    ordered = sort_runs([triplet, no_metric, margin], "e_recall@1")
    assert [r["name"] for r in ordered] == ["margin-s0", "triplet-s0", "npair-s0"]
    assert [r["name"] for r in sort_runs([triplet, no_metric, margin], "e_recall@1", descending=False)] == [
        "triplet-s0", "margin-s0", "npair-s0"]
    assert [r["name"] for r in sort_runs(three_runs, "name", descending=False)] == ["margin-s0", "npair-s0", "triplet-s0"]


def test_duration_and_progress_formatting():
    record = {"started_at": "2026-11-02T10:00:00+00:00", "ended_at": None, "created_at": "2026-11-02T09:59:00+00:00",
              "state": "running"}
    assert duration_seconds(record, CLOCK) == 7200
    assert duration_seconds({**record, "state": "crashed"}, CLOCK) is None  # no end time known
    assert duration_text(7200) == "2:00:00"
    assert duration_text(75) == "1:15"
    assert duration_text(3 * 86400 + 5 * 3600) == "3d05h"
    assert duration_text(None) == "-"
    assert progress_text(3, 12, width=4).plain == " 3/12 ▰▱▱▱"
    assert progress_text(0, None).plain == "0/?"
    assert started_text({"started_at": "2026-10-01T08:00:00+00:00"}, CLOCK) == "2026-10-01"


def test_run_cells_show_best_r_at_1(three_runs):
    cells = run_cells(three_runs[0], table_columns(None, three_runs), selected=True, now=CLOCK)
    assert cells["R@1"].plain == f"{three_runs[0]['best']['test/e_recall@1']['value']:.4f}"
    assert cells["mark"].plain == "●" and cells["state"].plain == "finished"


def test_where_a_run_executes_reads_like_squeue_in_the_table_and_in_words_on_the_run_screen():
    from dmltui.listing import where_text
    from dmltui.tui.format import job_text
    from dmltui.tui.run_view import header_text

    job = {"state": "queued", "epoch": 0, "epochs": 5, "executor": "slurm", "slurm_job_id": "4242_3"}
    pending = {**job, "slurm_state": "PENDING", "slurm_reason": "Resources"}
    running = {**job, "state": "running", "slurm_state": "RUNNING", "slurm_node": "gpu-node-07"}
    assert where_text({"state": "finished"}) == "local"
    assert where_text(pending) == "4242_3 PD (Resources)"  # squeue's JOBID ST NODELIST(REASON)
    assert where_text(running) == "4242_3 R gpu-node-07"
    assert where_text({**job, "slurm_state": "COMPLETING", "slurm_node": "gpu-node-07"}) == "4242_3 CG gpu-node-07"
    assert where_text(job) == "4242_3"  # no longer in the queue
    assert job_text(pending).plain == "slurm job 4242_3: PENDING (Resources)"
    assert job_text(running).plain == "slurm job 4242_3: RUNNING on gpu-node-07"
    assert job_text(job).plain == "slurm job 4242_3: not in the queue"
    lines = header_text({**pending, "error": "boom"}, CLOCK).plain.splitlines()
    assert lines[1:] == ["slurm job 4242_3: PENDING (Resources)", "boom"]
    assert len(header_text({"state": "finished", "epoch": 5, "epochs": 5}, CLOCK).plain.splitlines()) == 1  # local: no job line


def test_the_where_column_appears_once_a_run_is_on_slurm(three_runs, isolated_env):
    """Runs on this machine alone: no column says so. A run submitted to SLURM (here one that ended, so that no squeue
    is asked) brings the "where" column: its job for it, "local" for the others."""
    app = app_for_tests()

    async def scenario(pilot):
        table = app.screen.table
        await wait_for(pilot, lambda: table.row_count == 3)
        assert "where" not in table.column_order and len(table.columns) == len(table.column_order)
        record = fake_run(isolated_env, name="on-slurm", index=3, save=False)
        run_dir = Path(record["run_dir"])
        status = json.loads((run_dir / "status.json").read_text())
        (run_dir / "status.json").write_text(json.dumps({**status, "executor": "slurm", "slurm_job_id": "4242_0"}))
        run_ops.open_store().insert({**record, **run_ops.summarize(run_dir)})
        await wait_for(pilot, lambda: table.row_count == 4)
        assert table.column_order.index("where") == table.column_order.index("state") + 1
        assert str(table.get_cell(record["id"], "where")) == "4242_0"
        assert str(table.get_cell(three_runs[0]["id"], "where")) == "local"

    run_app(app, scenario)


# --------------------------------------------------------------------------- monitor and tails


def test_monitor_reads_only_the_store_files_that_changed(three_runs, isolated_env, monkeypatch):
    from dmltui.store import AtomicJSONStorage

    monitor = RunsMonitor()
    assert monitor.poll() is True and len(monitor.records) == 3
    unchanged = dict(monitor.records)
    reads = []
    original = AtomicJSONStorage._read_file
    monkeypatch.setattr(AtomicJSONStorage, "_read_file", lambda self: reads.append(self.path.name) or original(self))
    assert monitor.poll() is False and reads == []  # nothing changed: not even read
    RunStore(isolated_env / "runs.json").modify(three_runs[0]["id"], lambda r: r.update(notes="changed"))
    reads.clear()
    assert monitor.poll() is True
    assert reads == [f"ended-{three_runs[0]['id'][:6]}.json"]  # the finished run's partition, not the live file
    assert monitor.records[three_runs[0]["id"]]["notes"] == "changed"
    assert all(monitor.records[r["id"]] is unchanged[r["id"]] for r in three_runs[1:])  # unchanged rows keep their record


def test_monitor_follows_a_live_run_and_detects_its_death(isolated_env):
    process = sleeper()
    try:
        record = fake_run(isolated_env, name="live", state="running", epoch=1, epochs=5, pid=process.pid)
        monitor = RunsMonitor()
        monitor.poll()
        assert monitor.records[record["id"]]["state"] == "running" and monitor.live_count() == 1
        assert monitor.poll() is False
        rd = Path(record["run_dir"])
        with open(rd / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"kind": "eval", "epoch": 2, "split": "test", "metrics": {"e_recall@1": 0.99}}) + "\n")
        status = json.loads((rd / "status.json").read_text())
        (rd / "status.json").write_text(json.dumps({**status, "epoch": 2}))
        assert monitor.poll() is True
        updated = monitor.records[record["id"]]
        assert updated["epoch"] == 2 and updated["best"]["test/e_recall@1"] == {"value": 0.99, "epoch": 2}
        assert RunStore(isolated_env / "runs.json").get(record["id"])["epoch"] == 2  # written back to the store
        process.kill()
        process.wait()
        assert monitor.poll() is True
        assert monitor.records[record["id"]]["state"] == "crashed" and monitor.live_count() == 0
    finally:
        process.kill()
        process.wait()


def test_file_tail_reads_whole_appended_lines_and_restarts_on_replacement(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = FileTail(path, parse=json.loads)
    assert tail.read() == ([], False)
    path.write_text('{"a": 1}\n{"a": 2')  # a torn last line waits
    assert tail.read() == ([{"a": 1}], False)
    with open(path, "a") as handle:
        handle.write('}\nnot json\n{"a": 3}\n')
    assert tail.read() == ([{"a": 2}, {"a": 3}], False)
    replacement = tmp_path / "new"
    replacement.write_text('{"a": 1}\n')
    os.replace(replacement, path)  # a resumed run rewrites metrics.jsonl
    assert tail.read() == ([{"a": 1}], True)


def test_epoch_rows_fold_train_and_eval_records():
    rows = epoch_rows([
        {"kind": "eval", "epoch": 0, "split": "test", "metrics": {"e_recall@1": 0.1, "rho_spectrum@0": [1, 2]}},
        {"kind": "train", "epoch": 1, "split": "train", "metrics": {"loss": 0.5}},
        {"kind": "eval", "epoch": 1, "split": "test", "metrics": {"e_recall@1": 0.4}},
        {"kind": "baseline", "epoch": None, "split": "test", "metrics": {"e_recall@1": 0.3}},
    ])
    assert rows == [{"epoch": 0, "test/e_recall@1": 0.1}, {"epoch": 1, "train/loss": 0.5, "test/e_recall@1": 0.4}]


# --------------------------------------------------------------------------- the runs screen (Pilot)


def shown_names(app) -> list[str]:
    return [r["name"] for r in app.screen.shown]


def test_runs_screen_lists_filters_and_sorts(three_runs):
    app = app_for_tests()

    async def scenario(pilot):
        assert shown_names(app) == ["npair-s0", "triplet-s0", "margin-s0"]  # newest first
        table = app.screen.table
        assert table.row_count == 3
        assert str(table.get_cell(three_runs[2]["id"], "state")) == "failed"
        await pilot.press("slash", *"state:finished")
        await wait_for(pilot, lambda: shown_names(app) == ["triplet-s0", "margin-s0"])  # filtering is synchronous
        await pilot.press("enter")  # leaves the filter box for the table
        assert app.focused is table
        await pilot.press("escape")  # clears the filter
        await wait_for(pilot, lambda: len(shown_names(app)) == 3)
        await pilot.press("s")  # sort dialog: choose best R@1
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ChoiceScreen")
        options = app.screen.query_one("OptionList")
        options.highlighted = [value for value, _ in app.screen.choices].index("e_recall@1")
        await pilot.press("enter")
        await wait_for(pilot, lambda: shown_names(app) == ["margin-s0", "triplet-s0", "npair-s0"])
        assert "best R@1 ↓" in str(app.screen.query_one("#summary").render())
        await pilot.press("o")
        await wait_for(pilot, lambda: shown_names(app) == ["npair-s0", "triplet-s0", "margin-s0"])

    run_app(app, scenario)


def test_runs_screen_shows_a_run_that_appears_and_progresses(isolated_env):
    process = sleeper()
    app = app_for_tests()
    try:
        async def scenario(pilot):
            assert app.screen.table.row_count == 0
            record = fake_run(isolated_env, name="late", state="running", epoch=1, epochs=4, pid=process.pid)
            await wait_for(pilot, lambda: shown_names(app) == ["late"], timeout=5)
            assert str(app.screen.table.get_cell(record["id"], "epoch")).startswith("1/4")
            status_path = Path(record["run_dir"]) / "status.json"
            status = json.loads(status_path.read_text())
            status_path.write_text(json.dumps({**status, "epoch": 3}))
            await wait_for(pilot, lambda: str(app.screen.table.get_cell(record["id"], "epoch")).startswith("3/4"), timeout=3)
            process.kill()
            await wait_for(pilot, lambda: str(app.screen.table.get_cell(record["id"], "state")) == "crashed", timeout=5)

        run_app(app, scenario)
    finally:
        process.kill()
        process.wait()


def test_stop_asks_first_then_stops_the_run(isolated_env):
    process = sleeper()
    record = fake_run(isolated_env, name="victim", state="running", epoch=1, epochs=4, pid=process.pid)
    app = app_for_tests()
    try:
        async def scenario(pilot):
            await pilot.press("x")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen")
            await pilot.press("n")  # cancel: nothing happens
            await pilot.pause(0.3)
            assert process.poll() is None
            await pilot.press("x", "y")
            await wait_for(pilot, lambda: app.run_record(record["id"])["state"] == "stopped", timeout=10)
            assert str(app.screen.table.get_cell(record["id"], "state")) == "stopped"

        run_app(app, scenario)
        assert process.wait(timeout=5) == -signal.SIGTERM
    finally:
        process.kill()
        process.wait()


def test_delete_removes_the_run_and_its_directory(three_runs, isolated_env):
    app = app_for_tests()
    victim = three_runs[2]  # newest: under the cursor

    async def scenario(pilot):
        await pilot.press("d")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen")
        await pilot.press("y")
        await wait_for(pilot, lambda: shown_names(app) == ["triplet-s0", "margin-s0"], timeout=30)  # a worker thread: slow under load

    run_app(app, scenario)
    assert not Path(victim["run_dir"]).exists()
    assert RunStore(isolated_env / "runs.json").get(victim["id"]) is None


def test_delete_refuses_a_live_run(isolated_env):
    process = sleeper()
    record = fake_run(isolated_env, name="alive", state="running", epoch=1, epochs=4, pid=process.pid)
    app = app_for_tests()
    try:
        async def scenario(pilot):
            await pilot.press("d", "y")
            await pilot.pause(0.5)
            assert "stop it first" in " ".join(str(n.message) for n in app._notifications)

        run_app(app, scenario)
        assert Path(record["run_dir"]).exists() and process.poll() is None
    finally:
        process.kill()
        process.wait()


def test_quitting_never_stops_a_run(isolated_env):
    process = sleeper()
    fake_run(isolated_env, name="survivor", state="running", epoch=1, epochs=4, pid=process.pid)
    app = app_for_tests()
    try:
        async def scenario(pilot):
            await pilot.press("q")

        run_app(app, scenario)
        time.sleep(0.2)
        assert process.poll() is None and run_ops.pid_alive(process.pid)
    finally:
        process.kill()
        process.wait()


def test_compare_needs_two_runs_and_selection_marks(three_runs):
    app = app_for_tests()

    async def scenario(pilot):
        await pilot.press("space")
        assert app.screen.selected == {three_runs[2]["id"]}
        assert str(app.screen.table.get_cell(three_runs[2]["id"], "mark")) == "●"
        await pilot.press("slash", *"margin-s0", "enter")
        await wait_for(pilot, lambda: shown_names(app) == ["margin-s0"])
        await pilot.press("c")  # one run shown, none of it selected: nothing to compare
        await pilot.pause(0.2)
        assert type(app.screen).__name__ == "RunsScreen"
        assert "select two or more" in " ".join(str(n.message) for n in app._notifications)

    run_app(app, scenario)


def test_help_and_command_palette_list_the_screen_actions(three_runs):
    app = app_for_tests()

    async def scenario(pilot):
        commands = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("New", "Filter", "Sort", "Compare", "Stop", "Resume", "Rerun", "Delete", "Help", "Quit"):
            assert title in commands
        assert len(commands) == len(set(commands))
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        from rich.console import Console

        from dmltui.tui.screens.help import GENERAL, keys_table

        console = Console(record=True, width=150)
        console.print(keys_table(app.screen.for_screen, app.BINDINGS))
        keys = console.export_text()
        assert "Stop the run: SIGTERM" in keys and "ctrl+p" in keys and "?" in keys
        assert "state:running" in GENERAL
        await pilot.press("escape")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunsScreen")

    run_app(app, scenario)


def test_an_unreadable_store_is_reported_not_fatal(isolated_env):
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "runs.json").write_text("{broken")
    app = app_for_tests()

    async def scenario(pilot):
        await wait_for(pilot, lambda: app.store_error is not None)
        assert "corrupt" in app.store_error and "db rebuild" in app.store_error
        assert app.screen.table.row_count == 0

    run_app(app, scenario)


# --------------------------------------------------------------------------- snapshots


async def runs_shown(pilot):
    await wait_for(pilot, lambda: pilot.app.screen.table.row_count == 3)
    await tables_settled(pilot)


async def help_shown(pilot):
    await runs_shown(pilot)
    await pilot.press("question_mark")
    await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "HelpScreen")
    await pilot.pause(0.2)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_runs_screen_snapshot(three_runs, snap_compare, size):
    assert snap_compare(app_for_tests(poll_seconds=0), terminal_size=size, run_before=runs_shown)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_help_screen_snapshot(three_runs, snap_compare, size):
    assert snap_compare(app_for_tests(poll_seconds=0), terminal_size=size, run_before=help_shown)


# --------------------------------------------------------------------------- GPU panel


FAKE_GPUS = [("NVIDIA H200", 143771, 20480, 87), ("NVIDIA H200", 143771, 512, 0)]


def fake_gpus(monkeypatch):
    from dmltui import gpus

    infos = [gpus.GpuInfo(i, name, total, used, util) for i, (name, total, used, util) in enumerate(FAKE_GPUS)]
    monkeypatch.setattr(gpus, "gpus", lambda: infos)


def test_gpu_usage_names_the_run_holding_each_gpu(monkeypatch):
    from dmltui import gpus

    fake_gpus(monkeypatch)
    records = [{"name": "a", "state": "running", "gpus": [0]}, {"name": "b", "state": "finished", "gpus": [1]}]
    rows = gpus.usage(records)
    assert [(r["index"], r["runs"], r["utilization_pct"]) for r in rows] == [(0, ["a"], 87), (1, [], 0)]


def test_gpu_panel_shows_gpus_and_is_hidden_without_them(isolated_env, monkeypatch):
    process = sleeper()
    record = fake_run(isolated_env, name="on-gpu", state="running", epoch=1, epochs=4, pid=process.pid)
    status_path = Path(record["run_dir"]) / "status.json"
    status_path.write_text(json.dumps({**json.loads(status_path.read_text()), "gpus": [0]}))
    fake_gpus(monkeypatch)
    app = app_for_tests()
    try:
        async def scenario(pilot):
            panel = app.screen.query_one("#gpus")
            await wait_for(pilot, lambda: panel.display and panel.rows and panel.rows[0]["runs"], timeout=8)  # polled every 2 s
            assert [(r["index"], r["runs"]) for r in panel.rows] == [(0, ["on-gpu"]), (1, [])]
            from rich.console import Console

            from dmltui.tui.widgets.gpu_panel import gpu_table

            console = Console(record=True, width=100)
            console.print(gpu_table(panel.rows))
            text = console.export_text()
            assert "87%" in text and "20.0/140 GiB" in text and "on-gpu" in text and "free" in text

        run_app(app, scenario)
    finally:
        process.kill()
        process.wait()

    monkeypatch.setattr("dmltui.gpus.gpus", lambda: [])
    app = app_for_tests()

    async def no_gpus(pilot):
        await pilot.pause(0.3)
        assert app.screen.query_one("#gpus").display is False

    run_app(app, no_gpus)


def test_a_query_typed_right_after_the_slash_goes_into_the_filter(three_runs):
    """A terminal under load delivers "/" and the query after it in one read: each key must act where the previous
    one left the focus, so "s" and "x" of "state = ..." are typed, never the runs screen's sort and stop."""
    from textual import events
    from textual.widgets import Input

    app = app_for_tests()

    async def scenario(pilot):
        screen = app.screen
        query = "state = failed"
        keys = [("slash", "/")] + [("space" if c == " " else "equals_sign" if c == "=" else c, c) for c in query]
        for key, char in [*keys, ("enter", None)]:
            event = events.Key(key, char)
            event.set_sender(app)
            app._driver.send_message(event)  # no waiting in between: all of them queued before the first is handled
        await wait_for(pilot, lambda: screen.query_one("#filter", Input).value == query and app.focused is screen.table)
        assert app.screen is screen  # no sort picker opened
        await wait_for(pilot, lambda: shown_names(app) == ["npair-s0"])
        await pilot.press("slash", "end", "slash")  # the first moves into the box; there, "/" is a character
        assert app.focused is screen.query_one("#filter", Input)
        assert screen.query_one("#filter", Input).value == query + "/"

    run_app(app, scenario)
