"""The compare screen's Parallel and Differences tabs (dmltui/tui/widgets/compare_tabs.py), with Pilot: the chart's
status line and axes for hand-made stored runs, ranges set with r, the refusals of the Differences tab, and what two
trained runs retrieve differently, against RetrievalDiff computed here."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dmltui.testing import fake_run

# textual-image reads pixels with a Pillow call that Pillow 14 drops; it is textual-image's to change
pytestmark = pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated:DeprecationWarning")

CLOCK = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
STATUS_TAIL = "test/R@1 (m), best: test-max, optimistic (s) · r: range on an axis"


@pytest.fixture(autouse=True)
def text_not_images(monkeypatch):
    """Half-cell mode: the chart and the neighbours are drawn as text, whatever the terminal supports."""
    monkeypatch.setenv("DMLTUI_IMAGES", "halfcell")


async def wait_for(pilot, condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await pilot.pause(0.05)


def on_compare_screen(run_ids: list[str], scenario) -> None:
    """Run *scenario(pilot, screen)* on the compare screen of the stored runs *run_ids*, at 100x30."""
    from dmltui.tui.app import DmlTuiApp
    from dmltui.tui.screens.compare import CompareScreen

    app = DmlTuiApp(poll_seconds=0, clock=lambda: CLOCK)

    async def main():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: all(app.run_record(r) is not None for r in run_ids))
            app.push_screen(CompareScreen(run_ids))
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.rows_by_run)
            await scenario(pilot, app.screen)

    asyncio.run(main())


def shown(screen, selector: str) -> str:
    return str(screen.query_one(selector).render())


# --------------------------------------------------------------------------- Parallel


@pytest.fixture
def sweep(isolated_env) -> list[dict]:
    """Four runs over the loss and the learning rate (and their seeds, which are no axis)."""
    runs = [("margin", 1e-5), ("margin", 1e-4), ("triplet", 1e-3), ("triplet", 1e-4)]
    return [fake_run(isolated_env, name=f"{loss}-{lr:g}", index=i, seed=i, loss=loss, ceiling=0.5 + i / 20,
                     overrides={"optim": {"lr": lr, "epochs": 10}}) for i, (loss, lr) in enumerate(runs)]


async def set_range(pilot, axis: int, bounds: str) -> None:
    """r, the *axis*-th axis, *bounds* typed, enter."""
    from dmltui.tui.widgets.compare_tabs import RangeScreen

    await pilot.press("r")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, RangeScreen))
    await pilot.press(*["down"] * axis, "enter", *bounds, "enter")


def test_parallel_tab_ranges_narrow_the_runs_and_a_bad_range_changes_nothing(sweep):
    from dmltui.tui.widgets.compare_tabs import ParallelPanel, ParallelText, RangeScreen

    async def scenario(pilot, screen):
        panel = screen.query_one(ParallelPanel)
        assert not screen.check_action("set_range", ())  # r only on its tab
        await pilot.press("4")
        await wait_for(pilot, lambda: panel.chart is not None)
        assert screen.check_action("set_range", ()) and not screen.check_action("differences_view", ())
        assert shown(screen, "#parallel-status") == f"4 runs · {STATUS_TAIL}"
        assert [key for key, _ in panel.chart.axis_choices()] == ["loss.name", "optim.lr", "test/e_recall@1"]
        assert panel.chart.axis_choices()[1][1] == "optim.lr: 1e-05..0.001 (log)"
        drawn = screen.query_one(ParallelText)
        assert len(drawn.data.runs) == 4 and "e_recall@1 (test-max)" in str(drawn.render())

        await set_range(pilot, 1, "5e-5:2e-4")  # the two runs at 1e-4
        await wait_for(pilot, lambda: not isinstance(pilot.app.screen, RangeScreen))
        assert shown(screen, "#parallel-status") == f"2 of 4 runs within optim.lr=5e-5:2e-4 · {STATUS_TAIL}"
        assert [r["name"] for r in drawn.data.runs] == ["margin-0.0001", "triplet-0.0001"]

        await set_range(pilot, 0, "margin")  # and margin's
        await wait_for(pilot, lambda: not isinstance(pilot.app.screen, RangeScreen))
        assert shown(screen, "#parallel-status").startswith(
            "1 of 4 runs within optim.lr=5e-5:2e-4 and loss.name=margin · ")
        assert [r["name"] for r in drawn.data.runs] == ["margin-0.0001"]

        await set_range(pilot, 1, "abc")  # not numbers: said in the dialog, which stays
        dialog = pilot.app.screen
        assert isinstance(dialog, RangeScreen)
        assert shown(dialog, "#range-error") == "LOW:HIGH must be numbers on axis optim.lr (1e-05..0.001 (log))"
        await pilot.press("escape")
        await wait_for(pilot, lambda: pilot.app.screen is screen)
        assert shown(screen, "#parallel-status").startswith("1 of 4 runs within optim.lr=5e-5:2e-4 and loss.name=margin")

        await pilot.press("m")  # another metric: the ranges on the config axes stay
        assert shown(screen, "#parallel-status").startswith("1 of 4 runs within optim.lr=5e-5:2e-4 and loss.name=margin"
                                                            " · test/R@2 (m)")
        await set_range(pilot, 1, "")  # empty clears the range on the learning rate
        await wait_for(pilot, lambda: not isinstance(pilot.app.screen, RangeScreen))
        assert shown(screen, "#parallel-status").startswith("2 of 4 runs within loss.name=margin · test/R@2 (m)")
        await set_range(pilot, 0, "")
        await wait_for(pilot, lambda: not isinstance(pilot.app.screen, RangeScreen))
        assert shown(screen, "#parallel-status") == f"4 runs · {STATUS_TAIL.replace('R@1', 'R@2')}"
        assert len(drawn.data.runs) == 4

    on_compare_screen([r["id"] for r in sweep], scenario)


def test_parallel_tab_draws_a_picture_where_the_terminal_shows_images(sweep, monkeypatch):
    """Where kitty graphics or sixel show (pretended here), the chart is write_parallel_png's picture, drawn in a
    worker; the text chart shows until it comes."""
    from dmltui.tui.widgets import compare_tabs

    monkeypatch.setattr(compare_tabs, "shows_images", lambda: True)

    async def scenario(pilot, screen):
        await pilot.press("4")
        image = screen.query_one("#parallel-image")
        await wait_for(pilot, lambda: image.display, timeout=30)
        assert image.image is not None and image.image.width > image.image.height  # a landscape chart
        assert not screen.query_one(compare_tabs.ParallelText).display
        assert shown(screen, "#parallel-status") == f"4 runs · {STATUS_TAIL}"

    on_compare_screen([r["id"] for r in sweep], scenario)


# --------------------------------------------------------------------------- Differences: refusals


@pytest.mark.parametrize("case, expected", [
    ("one", "the Differences tab compares two runs, not 1"),
    ("three", "the Differences tab compares two runs, not 3"),
    ("datasets", "the Differences tab compares runs on the same dataset, not cub200 and glyphs"),
])
def test_differences_tab_refuses_other_than_two_runs_of_one_dataset(isolated_env, case, expected):
    datasets = {"one": ["cub200"], "three": ["cub200"] * 3, "datasets": ["cub200", "glyphs"]}[case]
    runs = [fake_run(isolated_env, name=f"run-s{i}", index=i, seed=i, dataset=dataset)
            for i, dataset in enumerate(datasets)]

    async def scenario(pilot, screen):
        await pilot.press("5")
        await wait_for(pilot, lambda: shown(screen, "#diff-status") == expected)
        assert screen.check_action("differences_view", ()) and not screen.check_action("set_range", ())
        if case == "one":  # nor a parallel chart
            await pilot.press("4")
            await wait_for(pilot, lambda: shown(screen, "#parallel-status") ==
                           "no chart: parallel coordinates need 2 runs or more, got 1")

    on_compare_screen([r["id"] for r in runs], scenario)


# --------------------------------------------------------------------------- Differences: two trained runs


def noisy_copy(run_dir: Path, target: Path) -> Path:
    """Another run of the same dataset: a copy of *run_dir* under a new id, its best checkpoint's weights perturbed
    (so the two retrieve differently)."""
    import torch

    shutil.copytree(run_dir, target)
    shutil.rmtree(target / "embeddings", ignore_errors=True)
    manager = json.loads((target / "manager.json").read_text())
    manager.update(id=f"{manager['id']}-b", name="quickstart-noisy")
    (target / "manager.json").write_text(json.dumps(manager))
    [best] = (target / "checkpoints").glob("best_*.pt")
    state = torch.load(best, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    for name, weights in state["model"].items():
        if weights.is_floating_point() and "running" not in name:
            weights += 0.3 * weights.std().nan_to_num() * torch.randn(weights.shape, generator=generator)
    torch.save(state, best)
    return target


def test_differences_of_two_trained_runs_match_retrieval_diff_and_show_a_query_in_both(quickstart_copy, tmp_path):
    from dmltui import runs as run_ops
    from dmltui.inspect import inspect_run
    from dmltui.retrieval_diff import RetrievalDiff
    from dmltui.tui.widgets.compare_tabs import DifferencesPanel

    run_dirs = [quickstart_copy, noisy_copy(quickstart_copy, tmp_path / "quickstart-b")]
    records = [run_ops.record_from_run_dir(d) for d in run_dirs]
    run_ops.open_store().insert(*records)
    found = {}

    async def scenario(pilot, screen):
        panel = screen.query_one(DifferencesPanel)
        assert not panel.opened  # nothing computed before the tab shows
        await pilot.press("5")
        await wait_for(pilot, lambda: panel.diff is not None or "cannot" in shown(screen, "#diff-status"), timeout=120)
        assert panel.diff is not None, shown(screen, "#diff-status")
        diff = found["diff"] = RetrievalDiff(*(inspect_run(d, split="test", checkpoint="best") for d in run_dirs))
        counts = diff.counts()
        assert counts["only_a"] > 0 and counts["only_b"] > 0
        status = shown(screen, "#diff-status")
        assert status.startswith(f"A quickstart R@1 {diff.a.results.recall_at_1:.4f} · "
                                 f"B quickstart-noisy R@1 {diff.b.results.recall_at_1:.4f} · ")
        assert (f"A right, B wrong {counts['only_a']} · B right, A wrong {counts['only_b']} · both right "
                f"{counts['both_right']}, both wrong {counts['both_wrong']} of {counts['queries']}") in status
        table = screen.query_one("#diff-table")
        assert table.row_count == min(200, counts["only_a"]) + min(200, counts["only_b"])
        assert screen.focused is table

        await pilot.press("down", "enter")  # the second query A gets right and B wrong
        row = int(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        assert diff.right_a[row] and not diff.right_b[row]
        query = diff.query(row)
        for side, name in (("a", "quickstart"), ("b", "quickstart-noisy")):
            header = shown(screen, f"#diff-side-{side} .diff-side-header")
            ap = query[side]["ap"]
            assert header == f"{side.upper()} {name}: AP {'-' if ap is None else f'{ap:.2f}'}, first hit " \
                             f"{query[side]['first_hit'] or '-'}"
            lines = shown(screen, f"#diff-side-{side} .diff-side-text").splitlines()
            assert lines[0] == f"Q {query['class']}"
            assert [line.split()[-1] for line in lines[1:]] == [n["class"] for n in query[side]["neighbours"]]
            assert [line.split()[1] for line in lines[1:]] == ["✓" if n["correct"] else "✗"
                                                               for n in query[side]["neighbours"]]
        assert lines[1].split()[1] == "✗"  # B's nearest neighbour is of another class

        await pilot.press("v")  # recall@1 per class
        classes = screen.query_one("#diff-classes")
        assert screen.focused is classes and classes.row_count == len(diff.per_class())
        assert str(classes.get_row_at(0)[-1]) == diff.per_class()[0]["class"]
        assert shown(screen, "#diff-status").endswith("v: queries")

    on_compare_screen([r["id"] for r in records], scenario)
