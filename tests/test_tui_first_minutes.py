"""A new user's first minutes in the TUI: guidance where there is nothing to show, long preset names on one line,
and no edits lost to a stray escape (Pilot and snapshots at 80x24)."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import REPO
from test_tui_new_run import open_new_run, settled, until

from dmltui.testing import fake_run
from engine.config.presets import PresetLibrary

CLOCK = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
LONG_NAMES = ["imported-icml2020-margin-beta06-distance-cub200-s0-4", "cub-triplet-semihard"]


def make_app(**kwargs):
    from dmltui.tui.app import DmlTuiApp

    return DmlTuiApp(poll_seconds=kwargs.pop("poll_seconds", 0), clock=lambda: CLOCK, **kwargs)


@pytest.fixture
def long_named_presets(tmp_path, monkeypatch):
    """Bundled presets beside imported ones whose names are longer than the preset list is wide."""
    folder = tmp_path / "presets"
    folder.mkdir()
    for name in ("quickstart", "glyphs", "margin-b12-d", "cub200", "base"):
        shutil.copy(REPO / "presets" / f"{name}.toml", folder / f"{name}.toml")
    for name in LONG_NAMES:
        (folder / f"{name}.toml").write_text(f'description = "imported: {name}"\nextends = ["quickstart"]\n')
    monkeypatch.setattr("dmltui.home.preset_library", lambda: PresetLibrary([Path(folder)]))


def empty_text(app) -> str:
    return str(app.screen.query_one("#empty").render())


def test_an_empty_store_says_what_to_do(isolated_env):
    async def scenario():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.3)
            text = empty_text(app)
            assert "No runs yet" in text and "start a run from a preset" in text and "uv run dmltui quickstart" in text
            assert not app.screen.query_one("#runs").display and app.screen.query_one("#empty").display

    asyncio.run(scenario())


def test_a_filter_that_matches_nothing_says_so_and_escape_clears_it(isolated_env):
    fake_run(isolated_env, name="done", index=0)

    async def scenario():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.3)
            assert app.screen.query_one("#runs").display and not app.screen.query_one("#empty").display
            await pilot.press("slash", *"state:running", "enter")
            await until(pilot, lambda: "No runs match" in empty_text(app), what="the no-match message")
            assert "state:running" in empty_text(app) and "escape clears the filter" in empty_text(app)
            await pilot.press("escape")
            await until(pilot, lambda: app.screen.query_one("#runs").display, what="the table again")
            assert app.screen.query_one("#runs").row_count == 1

    asyncio.run(scenario())


def test_escape_asks_before_discarding_edits(isolated_env):
    from dmltui.tui.screens.dialogs import ConfirmScreen
    from dmltui.tui.screens.new_run import NewRunScreen

    async def scenario():
        app = make_app(poll_seconds=0.2)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_new_run(app, pilot)
            await pilot.press("escape")  # nothing edited: straight back
            await until(pilot, lambda: not isinstance(app.screen, NewRunScreen), what="back without asking")
            screen = await open_new_run(app, pilot)
            screen.form.set_value("optim.epochs", "3")
            await until(pilot, lambda: settled(screen), what="validation")
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            assert "Discard your edits (optim.epochs)?" in str(app.screen.query_one(".question").render())
            await pilot.press("n")  # stay: the edit is still there
            await until(pilot, lambda: app.screen is screen, what="back on the form")
            assert screen.form.values()["optim.epochs"] == "3"
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question again")
            await pilot.press("y")
            await until(pilot, lambda: not isinstance(app.screen, (NewRunScreen, ConfirmScreen)), what="discarded")

    asyncio.run(scenario())


def test_snapshot_empty_store_80x24(isolated_env, snap_compare):
    assert snap_compare(make_app(), terminal_size=(80, 24))


def test_snapshot_long_preset_names_80x24(long_named_presets, snap_compare):
    async def run_before(pilot):
        screen = await open_new_run(pilot.app, pilot)
        options = screen.query_one("#nr-preset-list")
        options.focus()
        options.highlighted = [option.id for option in options.options].index(LONG_NAMES[0])
        await until(pilot, lambda: screen.preset == LONG_NAMES[0] and settled(screen), what="the long-named preset")
        await pilot.pause(0.2)

    assert snap_compare(make_app(poll_seconds=0.2), terminal_size=(80, 24), run_before=run_before)
