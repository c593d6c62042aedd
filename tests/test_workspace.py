"""The runs table as a workspace: columns of any field, sorting by them, groups with compare's mean ± std (the
shared logic, then the runs screen through Pilot, and a snapshot at 80x24)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from conftest import dmltui, tables_settled
from test_tui_runs import app_for_tests, run_app, wait_for

from dmltui.columns import UnknownColumn, column, parse_columns, value_text
from dmltui.compare import group_label
from dmltui.listing import sort_runs
from dmltui.runs import load_config
from dmltui.testing import fake_run
from dmltui.workspace import Group, group_statistics, make_groups, sort_groups, table_columns, table_rows

LOSSES = {"margin": 0.62, "triplet": 0.56}
LRS = (1e-5, 1e-4)


@pytest.fixture
def sweep(isolated_env):
    """2 losses x 2 learning rates x 3 seeds, with a validation split (the val selection reads metrics.jsonl), and
    one failed margin run at 1e-4: 13 runs."""
    home, records, index = isolated_env, [], 0
    for loss, ceiling in LOSSES.items():
        for lr in LRS:
            for seed in range(3):
                records.append(fake_run(home, name=f"{loss}-lr{lr:g}-s{seed}", loss=loss, seed=seed, index=index,
                                        ceiling=ceiling + 0.01 * seed + 0.02 * (lr == 1e-4), splits=("val", "test"),
                                        overrides={"optim": {"lr": lr, "epochs": 6}}))
                index += 1
    records.append(fake_run(home, name="margin-lr0.0001-crashed", loss="margin", index=index, state="failed", epoch=2,
                            splits=("val", "test"), overrides={"optim": {"lr": 1e-4, "epochs": 6}}))
    return records


# --------------------------------------------------------------------------- columns


def test_a_column_reads_any_field_and_says_what_it_is():
    record = {"id": "r1", "name": "a", "state": "finished", "config_changes": {"optim.lr": 3e-5}, "seed": 2,
              "best": {"test/e_recall@1": {"value": 0.61234, "epoch": 4}}, "last": {"val/map_at_r": 0.25}, "tags": ["x", "y"]}
    lr, best, last, seed = column("config.optim.lr"), column("best.test.e_recall@1"), column("last.val.map_at_r"), column("seed")
    assert (lr.header, lr.text(record), lr.sort_field) == ("optim.lr", "3e-05", "config.optim.lr")
    assert (best.header, best.text(record), best.metric) == ("best test R@1", "0.6123", ("test", "e_recall@1"))
    assert (last.header, last.text(record), last.metric) == ("last val MAP@R", "0.2500", None)
    assert seed.text(record) == "2" and seed.numeric
    assert column("tags").text(record) == "x,y" and column("R@1").text(record) == "0.6123"
    assert column("config.optim.lr").text({"config_changes": {}}) == value_text(0.00001)  # the reference default
    assert [value_text(v) for v in (None, True, 0.5, 1e-4, 1234.5, 3)] == ["-", "true", "0.5000", "0.0001", "1234", "3"]


@pytest.mark.parametrize(("text", "message"), [
    ("nme", "unknown column 'nme'; nearest: name"),
    ("id,,R@2", "unknown column 'R@2'; nearest: R@1"),
    ("", "name at least one column"),
])
def test_an_unknown_column_names_the_nearest(text, message):
    with pytest.raises(UnknownColumn, match="^" + message.replace("(", r"\(")):
        parse_columns(text)


def test_parse_columns_keeps_the_order_and_drops_repeats():
    assert parse_columns(" id, config.optim.lr ,id,best.val.nmi") == ["id", "config.optim.lr", "best.val.nmi"]


def test_runs_sort_by_a_config_key_and_by_a_metric_of_a_split(sweep):
    by_lr = sort_runs(sweep, "config.optim.lr", descending=False)
    assert [r["config_changes"].get("optim.lr", 1e-5) for r in by_lr] == sorted(
        r["config_changes"].get("optim.lr", 1e-5) for r in sweep)
    by_val = sort_runs(sweep, "best.val.e_recall@1")
    values = [r["best"]["val/e_recall@1"]["value"] for r in by_val]
    assert values == sorted(values, reverse=True)


def test_a_sort_over_values_of_several_kinds_puts_numbers_before_text():
    records = [{"id": str(i), "config_changes": {"model.arch": value}} for i, value in enumerate(["resnet50", 3, "bninception", 1.5])]
    assert [r["id"] for r in sort_runs(records, "config.model.arch", descending=False)] == ["3", "1", "2", "0"]


# --------------------------------------------------------------------------- groups


def test_grouping_reads_the_summary_as_the_config_files_would(sweep):
    for record in sweep:
        from_file = {k: v for k, v in record.items() if k != "config_changes"}
        assert load_config(from_file)  # (the run dir's config.toml is there)
        for key in ("optim.lr", "config.loss.name", "run.seed", "preset", "name"):
            assert group_label(record, key) == group_label(from_file, key.removeprefix("config."))


def compare_groups(*options: str) -> dict[str, dict]:
    result = dmltui("compare", "--group-by", "optim.lr", "-m", "e_recall@1", "--format", "json", *options)
    assert result.returncode == 0, result.stderr
    return {row["group"]: row["metrics"]["e_recall@1"] for row in json.loads(result.stdout)}


def test_a_groups_cells_are_compare_group_bys_mean_of_the_cells_under_it(sweep):
    columns = table_columns(["name", "R@1", "best.test.e_recall@1", "config.optim.lr"], sweep, grouped=True)
    groups = make_groups(sweep, "config.optim.lr")
    assert [(g.label, len(g.runs)) for g in groups] == [("0.0001", 7), ("1e-05", 6)]
    found = group_statistics(groups, "config.optim.lr", columns)
    on_val = compare_groups("--split", "val", "--select", "test-max")  # best R@1 reads val: every run has one
    on_test = compare_groups("--split", "test", "--select", "test-max")
    for group in groups:
        finished = [run for run in group.runs if run["state"] == "finished"]
        shown = [column("R@1").value(run) for run in finished]  # the cells of its runs' rows
        stats = found[group.id]
        assert stats["R@1"]["mean"] == pytest.approx(statistics.fmean(shown)) == pytest.approx(on_val[group.label]["mean"])
        assert stats["R@1"]["std"] == pytest.approx(statistics.pstdev(shown))
        assert stats["R@1"]["n"] == len(finished) == on_val[group.label]["n"]
        tested = [column("best.test.e_recall@1").value(run) for run in finished]
        assert stats["best.test.e_recall@1"]["mean"] == pytest.approx(statistics.fmean(tested))
        assert stats["best.test.e_recall@1"]["mean"] == pytest.approx(on_test[group.label]["mean"])
    assert found[groups[0].id]["R@1"]["n"] == 6  # the failed run counts in its group's runs, not in the mean


def test_group_rows_open_onto_their_runs_and_sort_by_their_mean(sweep):
    columns = table_columns(None, sweep, grouped=True)
    groups = make_groups(sweep, "loss")
    found = group_statistics(groups, "loss", columns)
    for group in groups:
        group.stats = found[group.id]
    best_first = sort_groups(groups, "e_recall@1", columns, descending=True)
    assert [g.label for g in best_first] == ["margin", "triplet"]
    assert [g.label for g in sort_groups(groups, "e_recall@1", columns, descending=False)] == ["triplet", "margin"]
    rows = table_rows(sweep, best_first, {best_first[1].id}, "name", descending=False)
    assert isinstance(rows[0], Group) and isinstance(rows[1], Group) and rows[1].label == "triplet"
    assert [r["name"] for r in rows[2:]] == sorted(r["name"] for r in sweep if r["loss"] == "triplet")
    assert table_rows(sweep, None, set(), "name", descending=False) == sweep


# --------------------------------------------------------------------------- the runs screen


def test_the_column_picker_finds_a_config_key_and_the_table_sorts_by_it(sweep):
    async def scenario(pilot):
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.table.row_count == 13)
        await pilot.press("f")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "ColumnsScreen")
        await pilot.press(*"optim.lr", "enter")  # typed at once: the search box has the focus
        await pilot.press("ctrl+u", *"seed", "enter")
        await pilot.press("ctrl+u", *"state", "enter")  # a shown column: removed
        await pilot.press("escape")
        await wait_for(pilot, lambda: "config.optim.lr" in screen.table.column_order)
        order = screen.table.column_order  # added after best R@1, in the order added: in sight at 80 columns
        assert order[order.index("R@1") + 1:][:2] == ["config.optim.lr", "seed"] and "state" not in order
        screen.sort_by("config.optim.lr", descending=False)
        await pilot.pause(0.1)
        lrs = [str(screen.table.get_cell_at((row, screen.table.column_order.index("config.optim.lr"))))
               for row in range(screen.table.row_count)]
        assert lrs == ["1e-05"] * 6 + ["0.0001"] * 7
        assert "sort: optim.lr ↑" in str(screen.query_one("#summary").render())

    run_app(app_for_tests(poll_seconds=0), scenario)


def test_grouped_rows_show_count_and_mean_and_open_and_select_their_runs(sweep):
    async def scenario(pilot):
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.table.row_count == 13)
        await pilot.press("g")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "ChoiceScreen")
        options = pilot.app.screen.query_one("OptionList")
        options.highlighted = [o.id for o in options.options].index("config.optim.lr")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.table.row_count == 2 and screen.rows[0].stats is not None)
        r_at_1 = screen.table.column_order.index("R@1")
        groups = make_groups(sweep, "config.optim.lr")
        found = group_statistics(groups, "config.optim.lr", table_columns(None, sweep, grouped=True))
        for row, group in enumerate(groups):  # numeric order: 1e-05 before 0.0001
            cells = screen.table.get_row_at(1 - row)
            stats = found[group.id]["R@1"]
            assert str(cells[r_at_1]).startswith(f"{stats['mean']:.4f}±{stats['std']:.4f}")
            assert str(cells[screen.table.column_order.index("state")]) == f"{len(group.runs)} runs"
        assert "2 groups by config.optim.lr" in str(screen.query_one("#summary").render())
        await pilot.press("enter")  # the cursor's group opens onto its 6 runs
        await wait_for(pilot, lambda: screen.table.row_count == 8)
        await pilot.press("space")  # a group row selects all its runs
        assert len(screen.selected) == 6
        await pilot.press("enter")  # on a run row: its screen
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "RunScreen")

    run_app(app_for_tests(poll_seconds=0), scenario)


async def grouped_workspace(pilot):
    screen = pilot.app.screen
    await wait_for(pilot, lambda: screen.table.row_count == 13)
    screen.set_columns(["state", "name", "R@1", "config.optim.lr", "config.loss.name"])
    screen.set_group_by("config.loss.name")
    await wait_for(pilot, lambda: screen.table.row_count == 2 and screen.rows[0].stats is not None)
    await pilot.press("down", "enter")
    await wait_for(pilot, lambda: screen.table.row_count == 8)
    await tables_settled(pilot)


def test_grouped_workspace_snapshot_80x24(sweep, snap_compare):
    assert snap_compare(app_for_tests(poll_seconds=0), terminal_size=(80, 24), run_before=grouped_workspace)


def test_a_view_saved_in_the_tui_comes_back_in_the_tui_and_in_the_cli(sweep, tmp_path, monkeypatch):
    import tomllib

    config = tmp_path / "config.toml"
    monkeypatch.setenv("DMLTUI_CONFIG", str(config))

    async def scenario(pilot):
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.table.row_count == 13)
        screen.set_columns(["name", "R@1", "config.optim.lr"])
        screen.sort_by("config.optim.lr", descending=False)
        screen.set_group_by("config.loss.name")
        await pilot.press("slash", *"seed = 1", "enter")
        await wait_for(pilot, lambda: len(screen.shown) == 4)
        await pilot.press("v")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "ViewsScreen")
        await pilot.press(*"lr-seed1", "enter")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "RunsScreen")
        await pilot.press("escape")  # the filter cleared; then the default view, then the saved one
        screen.apply_view(type(screen.current_view())(name=""))
        await wait_for(pilot, lambda: screen.table.row_count == 13 and screen.group_by is None)
        await pilot.press("v")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "ViewsScreen")
        await pilot.press("down", "enter")  # the first saved view, below "(default)"
        await wait_for(pilot, lambda: screen.group_by == "config.loss.name" and len(screen.shown) == 4)
        assert screen.table.column_order[1:] == ["name", "R@1", "config.optim.lr"]
        assert (screen.sort_field, screen.descending) == ("config.optim.lr", False)
        assert screen.sub_title == "view lr-seed1"

    run_app(app_for_tests(poll_seconds=0), scenario)
    assert tomllib.loads(config.read_text())["views"]["lr-seed1"] == {
        "filter": "seed = 1", "columns": ["name", "R@1", "config.optim.lr"], "sort": "config.optim.lr", "order": "asc",
        "group_by": "config.loss.name"}
    groups = json.loads(dmltui("runs", "list", "--view", "lr-seed1", "--json").stdout)  # grouped, as the view is
    assert {g["group"]: len(g["runs"]) for g in groups} == {"margin": 2, "triplet": 2}


def test_runs_list_group_by_prints_the_groups_of_the_runs_screen(sweep):
    groups = json.loads(dmltui("runs", "list", "--group-by", "config.loss.name", "--fields", "R@1,best.test.nmi",
                               "--json").stdout)
    assert [(g["group"], g["n"]) for g in groups] == [("margin", 7), ("triplet", 6)]
    columns = table_columns(["R@1", "best.test.nmi"], sweep, grouped=True)
    expected = {g.label: s for g, s in zip(make_groups(sweep, "config.loss.name"), group_statistics(
        make_groups(sweep, "config.loss.name"), "config.loss.name", columns).values(), strict=True)}
    for group in groups:
        for key in ("R@1", "best.test.nmi"):
            assert group["metrics"][key]["mean"] == pytest.approx(expected[group["group"]][key]["mean"])
            assert group["metrics"][key]["n"] == expected[group["group"]][key]["n"]
    table = dmltui("runs", "list", "--group-by", "config.loss.name", env={"COLUMNS": "200"})
    assert table.returncode == 0 and table.stdout.splitlines()[1].split()[:3] == ["margin", "cub200", "7"], table.stdout
    bad = dmltui("runs", "list", "--group-by", "config.los.name")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --group-by: cannot group by") \
        and bad.stderr.count("\n") == 1, bad.stderr


def test_tags_and_a_note_edited_in_the_tui_land_as_the_cli_would_write_them(sweep):
    from dmltui import runs as run_ops
    from dmltui.store import RunStore

    first, second, third = sweep[0], sweep[1], sweep[2]  # first: no tags; second: "paper"

    async def scenario(pilot):
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.table.row_count == 13)
        screen.table.move_cursor(row=screen.table.get_row_index(first["id"]))
        await pilot.press("e")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "AnnotateScreen")
        await pilot.press(*"paper, ", *"x" * 70, "ctrl+s")  # a tag too long: one line in the dialog, nothing written
        await wait_for(pilot, lambda: "a tag is 1-64 characters" in str(pilot.app.screen.query_one("#annotate-error").render()))
        assert RunStore(run_ops.open_store().path).get(first["id"])["tags"] == []
        await pilot.press("ctrl+u", *"best", "tab", *"lr sweep, seed 0", "ctrl+s")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "RunsScreen")
        screen.selected = {second["id"], third["id"]}
        await pilot.press("e")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "AnnotateScreen")
        await pilot.press(*"final", "tab", *"paper", "ctrl+s")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "RunsScreen")
        await pilot.press("e")  # escape changes nothing
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "AnnotateScreen")
        await pilot.press(*"never", "escape")

    run_app(app_for_tests(poll_seconds=0), scenario)
    store = run_ops.open_store()
    after = {r["id"]: r for r in store.all()}
    assert (after[first["id"]]["tags"], after[first["id"]]["notes"]) == (["best"], "lr sweep, seed 0")
    assert after[second["id"]]["tags"] == ["final"] and after[third["id"]]["tags"] == ["final"]
    for record in (first, second, third):  # the run dirs' manager.json says the same (what db rebuild reads)
        manager = json.loads((Path(record["run_dir"]) / run_ops.MANAGER_FILE).read_text())
        assert (manager["tags"], manager["notes"]) == (after[record["id"]]["tags"], after[record["id"]]["notes"])
    assert all("never" not in r["tags"] for r in after.values())
