"""A lab's year of runs: the runs table with thousands of rows, `runs list --limit/--fields`, and `db rebuild`
with the ended partitions (issue 17). The speed figures themselves are bench/store.py's and bench/tui.py's."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

from conftest import dmltui

from dmltui.listing import sort_runs
from dmltui.store import RunStore, partitions_dir
from dmltui.testing import ended_record, fake_run

RUNS = 2_500  # more than the table's first screenful plus several chunks


def _store(home, runs: int = RUNS, live: int = 0) -> list[dict]:
    records = [ended_record(i, runs) for i in range(runs)]
    live_records = [fake_run(home, name=f"live-{i}", index=i, state="queued", epochs=5, save=False) for i in range(live)]
    RunStore(home / "runs.json").insert(*records, *live_records)
    return records + live_records


def _app():
    from dmltui.tui.app import DmlTuiApp

    return DmlTuiApp(poll_seconds=0, clock=lambda: datetime(2026, 12, 4, tzinfo=UTC))


async def _until(pilot, condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await pilot.pause(0.02)


def test_the_runs_table_shows_the_first_screenful_then_loads_the_rest_in_chunks(isolated_env):
    records = _store(isolated_env)
    from dmltui.tui.widgets.runs_table import RunsTable

    first_sizes: list[tuple[int, int]] = []
    original = RunsTable._rebuild

    def watched(self, cursor):
        original(self, cursor)
        first_sizes.append((self.loaded, len(self.records)))

    async def scenario():
        app = _app()
        async with app.run_test(size=(80, 24)) as pilot:
            table = app.screen.query_one(RunsTable)
            await _until(pilot, lambda: table.records and not table.pending)
            assert first_sizes[-1] == (RunsTable.FIRST_ROWS, RUNS)  # what the first paint waited for
            assert table.row_count == RUNS
            newest = sort_runs(records, "created_at")
            assert [table.get_row_at(i)[2] for i in (0, 1, RUNS - 1)] == [newest[i]["name"] for i in (0, 1, RUNS - 1)]
            summary = str(app.screen.query_one("#summary").render())
            assert f"{RUNS} of {RUNS} runs" in summary

            # sorting moves the rows, re-adds none, and keeps the cursor on its run
            table.move_cursor(row=1234)
            await pilot.pause()
            on_cursor = table.cursor_row_key()
            rebuilds = len(first_sizes)
            app.screen.sort_by("e_recall@1", descending=True)
            await pilot.pause()
            assert len(first_sizes) == rebuilds and table.row_count == RUNS
            by_metric = sort_runs(newest, "e_recall@1")  # ties stay newest first
            assert [table.get_row_at(i)[2] for i in range(5)] == [r["name"] for r in by_metric[:5]]
            assert table.cursor_row_key() == on_cursor

            # filtering rebuilds with the matching runs only
            app.screen.query_one("#filter").value = "triplet s3-"
            await _until(pilot, lambda: not table.pending and table.row_count < RUNS)
            expected = [r for r in records if r["loss"] == "triplet" and "-s3-" in r["name"]]
            assert table.row_count == len(expected) > 0
            assert {table.get_row_at(i)[2] for i in range(table.row_count)} == {r["name"] for r in expected}

    try:
        RunsTable._rebuild = watched
        asyncio.run(scenario())
    finally:
        RunsTable._rebuild = original


def test_a_changed_live_run_updates_its_row_without_redrawing_the_list(isolated_env):
    records = _store(isolated_env, runs=600, live=1)
    live = records[-1]
    from dmltui.tui.widgets.runs_table import RunsTable

    async def scenario():
        app = _app()
        async with app.run_test(size=(80, 24)) as pilot:
            table = app.screen.query_one(RunsTable)
            await _until(pilot, lambda: table.records and not table.pending)
            generation = table._generation
            RunStore(isolated_env / "runs.json").modify(live["id"], lambda r: r.update(name="renamed-live"))
            app.refresh_runs()
            await _until(pilot, lambda: app.monitor.records[live["id"]]["name"] == "renamed-live")
            await pilot.pause()
            assert app.monitor.changed_ids == {live["id"]}
            assert table._generation == generation  # patched in place, not re-added
            assert table.get_cell(live["id"], "name") == "renamed-live"

    asyncio.run(scenario())


def test_runs_list_limit_and_fields(isolated_env):
    records = _store(isolated_env, runs=50)
    result = dmltui("runs", "list", "--json", "--limit", "3", "--fields", "id,state,best")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    newest = sort_runs(records, "created_at")[:3]
    assert [r["id"] for r in listed] == [r["id"] for r in newest]
    assert all(set(r) == {"id", "state", "best"} for r in listed)
    assert listed[0]["best"] == newest[0]["best"]

    bad = dmltui("runs", "list", "--json", "--fields", "id,colour")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: --fields: unknown field 'colour'; fields: id, name, state")
    assert len(bad.stderr.strip().splitlines()) == 1
    assert dmltui("runs", "list", "--limit", "0").returncode == 2


def test_db_rebuild_moves_the_live_file_and_the_partitions_aside(isolated_env):
    runs = [fake_run(isolated_env, name=f"r{i}", index=i * 24 * 40, tags=[f"t{i}"]) for i in range(3)]  # 40 days apart
    store = isolated_env / "runs.json"
    assert sorted(p.name for p in partitions_dir(store).glob("ended-*.json")) == [
        "ended-202611.json", "ended-202612.json", "ended-202701.json"]
    (partitions_dir(store) / "ended-202611.json").write_text("{broken")
    broken = dmltui("runs", "list")
    assert broken.returncode == 1 and "ended-202611.json is corrupt" in broken.stderr
    rebuilt = dmltui("db", "rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    report = json.loads(rebuilt.stdout)
    previous = report["previous"]
    assert (isolated_env / f"{previous}.d" / "ended-202611.json").read_text() == "{broken"  # kept, not deleted
    listed = dmltui("runs", "list", "--json")
    assert sorted((r["name"], r["tags"]) for r in json.loads(listed.stdout)) == [(r["name"], r["tags"]) for r in runs]
