"""The new-run screen: the form logic (dmltui.form_fields) on its own, then the screen through Textual's pilot."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from textual.widgets.select import InvalidSelectValueError

from dmltui import form_fields as cf
from dmltui.launching import plan_runs
from dmltui.runs import load_config
from engine.config.presets import ConfigError, PresetLibrary, flatten

# --------------------------------------------------------------------------- the form logic


def _leaf_keys() -> set[str]:
    """Every leaf of the config, from the pydantic models (not from the JSON schema the form is built from)."""
    from pydantic import BaseModel

    from engine.config.schema import Config

    keys = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            key = prefix + (info.alias or name)
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, key + ".")
            else:
                keys.add(key)

    walk(Config, "")
    return keys


def test_field_specs_cover_every_config_key_with_its_type():
    specs = {s.key: s for s in cf.field_specs()}
    assert set(specs) == _leaf_keys()
    assert specs["optim.epochs"].kind == "int" and specs["optim.epochs"].bounds == ">= 1"
    assert specs["optim.lr"].kind == "float" and specs["optim.epochs"].description
    assert specs["eval.at_start"].kind == "bool"
    assert specs["optim.scheduler"].kind == "choice" and specs["optim.scheduler"].choices == ("step", "cosine", "warmup_cosine", "none")
    assert specs["optim.tau"].kind == "list" and specs["optim.tau"].item_kind == "int"
    assert specs["miner.parametric.support_lim"].length == 2
    assert specs["data.image_size"].nullable and specs["data.image_size"].kind == "int"
    assert specs["loss.softtriplet.lambda"].label == "softtriplet.lambda"  # the alias, as presets spell it
    assert specs["loss.margin.beta"].part == "margin" and specs["optim.lr"].part is None


def test_choices_come_from_the_registries():
    from engine import data, losses, miners, models, samplers

    choices = cf.registry_choices()
    specs = {s.key: s for s in cf.field_specs(choices=choices)}
    assert list(specs["loss.name"].choices) == losses.LOSSES.names()
    assert list(specs["miner.name"].choices) == miners.MINERS.names()
    assert list(specs["sampler.name"].choices) == samplers.SAMPLERS.names()
    assert list(specs["data.dataset"].choices) == data.list_datasets()
    assert {models.parse_arch(a).backbone for a in specs["model.arch"].choices} == set(models.list_models())
    assert all(specs[k].kind == "choice" for k in cf.REGISTRY_FIELDS)
    assert cf.options_for(specs["model.arch"], "resnet50_double")[0] == "resnet50_double"  # a preset's own value stays offered


def test_edited_values_become_overrides_that_plan_runs_applies():
    specs = cf.field_specs()
    [run], _ = plan_runs(["quickstart"], [])
    baseline = cf.flat_config(run.resolved.config.to_dict())
    values = {s.key: cf.display_value(s, baseline.get(s.key)) for s in specs}
    assert cf.form_overrides(specs, values, baseline).overrides == []  # the preset's own values: nothing to override
    edits = {
        "optim.epochs": "3", "optim.lr": "2e-4", "eval.at_start": False, "loss.name": "triplet",
        "optim.tau": "5, 8", "eval.metrics": "e_recall@1, nmi", "data.image_size": "24",
        "miner.parametric.support_lim": "0.2, 1.5", "log.group": "my group", "loss.softtriplet.lambda": "4",
        "optim.weight_decay": "0.00",  # the same value typed differently: no override
    }
    found = cf.form_overrides(specs, {**values, **edits}, baseline)
    assert "optim.weight_decay" not in found.changed and not found.errors
    assert "optim.epochs=3" in found.overrides and "loss.name=triplet" in found.overrides
    [run], _ = plan_runs(["quickstart"], found.overrides)
    got = flatten(run.resolved.config.to_dict())
    assert got["optim.epochs"] == 3 and got["optim.lr"] == 2e-4 and got["eval.at_start"] is False
    assert got["loss.name"] == "triplet" and got["optim.tau"] == [5, 8] and got["eval.metrics"] == ["e_recall@1", "nmi"]
    assert got["data.image_size"] == 24 and got["miner.parametric.support_lim"] == [0.2, 1.5]
    assert got["log.group"] == "my group" and got["loss.softtriplet.lambda"] == 4.0
    # an input that cannot hold a nullable value's "unset": said before validation
    unset = cf.form_overrides(specs, {**values, "data.image_size": ""}, {**baseline, "data.image_size": 32})
    assert "data.image_size" in unset.errors and unset.overrides == []


def test_text_of_the_wrong_type_goes_to_the_validator_as_typed():
    spec = next(s for s in cf.field_specs() if s.key == "optim.epochs")
    assert cf.is_changed(spec, "abc", 20) and cf.override_for(spec, "abc") == "optim.epochs=abc"
    with pytest.raises(ConfigError) as error:
        plan_runs(["quickstart"], [cf.override_for(spec, "abc")])
    assert cf.error_key(error.value.lines[0], {"optim.epochs"}) == "optim.epochs"
    assert cf.toml_literal("true") == '"true"' and cf.toml_literal("a\"b") == '"a\\"b"' and cf.toml_literal([1.5, 2]) == "[1.5, 2]"


def test_error_lines_map_to_the_fields_they_name():
    keys = {s.key for s in cf.field_specs()}
    with pytest.raises(ConfigError) as error:
        plan_runs(["quickstart"], ["optim.epochs=-1", "loss.name=nope", "loss.margin.beta=x"])
    mapped = {cf.error_key(line, keys): cf.error_message(line, cf.error_key(line, keys)) for line in error.value.lines}
    assert set(mapped) == {"optim.epochs", "loss.name", "loss.margin.beta"}
    assert mapped["optim.epochs"].startswith("-1: ") and "greater than or equal to 1" in mapped["optim.epochs"]
    assert "unknown loss 'nope'" in mapped["loss.name"]
    with pytest.raises(ConfigError) as error:  # a model-level check names two keys: the first is the field
        plan_runs(["quickstart"], ["sampler.batch_size=10"])
    assert cf.error_key(error.value.lines[0], keys) == "sampler.batch_size"
    assert cf.error_key("config: loss 'softmax' does not use a miner", keys) is None


def test_run_count_and_cli_command():
    assert cf.run_count("", [0, 1, 2], []) == 3
    assert cf.run_count("0-1", [0], ["loss.name=margin,triplet", "optim.lr=1e-4,1e-5,1e-6"]) == 12
    with pytest.raises(ValueError):
        cf.run_count("0-x", None, [])
    with pytest.raises(ValueError):
        cf.run_count("", None, ["loss.name"])
    assert cf.grid_lines("a=1,2\n\n# note\n b=x,y ") == ["a=1,2", "b=x,y"]
    assert cf.split_tags("a, b c") == ["a", "b", "c"]
    assert cf.cli_command(["quickstart"], ["optim.epochs=1", 'log.group="a b"'], gpus="cpu", tags=["t"]) == (
        "dmltui run quickstart --set optim.epochs=1 --set 'log.group=\"a b\"' --gpus cpu --tag t")
    assert cf.cli_command(["q"], [], seeds="0-1", grid=["loss.name=a,b"]).startswith("dmltui sweep q --grid loss.name=a,b")


# --------------------------------------------------------------------------- the screen (pilot)

LOAD_TIMEOUT = 120.0  # the first screen of a process imports the engine's registries (torch)


async def until(pilot, predicate, timeout: float = LOAD_TIMEOUT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s")


def settled(screen) -> bool:
    """Loaded, resolved and validated, with no validation pending."""
    return (screen.resolved is not None and bool(screen.choices) and screen.form is not None and screen.form.ready
            and screen.outcome is not None
            and screen.validated_generation == screen.generation and not screen.launching)


async def open_new_run(app, pilot):
    from dmltui.tui.screens.new_run import NewRunScreen

    await pilot.press("n")
    screen = await until(pilot, lambda: isinstance(app.screen, NewRunScreen) and app.screen, what="new-run screen")
    await until(pilot, lambda: settled(screen), what="form loaded")
    return screen


def stored_runs() -> list[dict]:
    from dmltui.runs import open_store

    return open_store().all()


def test_invalid_override_shows_inline_error_and_starts_nothing(isolated_env):
    from textual.widgets import TabbedContent

    from dmltui.tui.app import DmlTuiApp

    async def scenario():
        app = DmlTuiApp(poll_seconds=0.2)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_new_run(app, pilot)
            assert screen.presets() == ["quickstart"] and screen.baseline["optim.epochs"] == 20
            screen.form.query_one(TabbedContent).active = "section-optim"
            await pilot.pause()
            screen.query_one("#field-optim-epochs").focus()
            await pilot.press("end", "ctrl+u", "minus", "1", "ctrl+s")
            await until(pilot, lambda: settled(screen) and screen.outcome.problems, what="validation")
            row = screen.form.row("optim.epochs")
            error = str(row.query_one(".field-error").render())
            assert row.display and "-1: Input should be greater than or equal to 1" in error
            assert row.edited and "* epochs" in str(row.query_one(".field-label").render())
            assert "optim!" in str(screen.form.query_one(TabbedContent).get_tab("section-optim").label)
            assert "nothing will start" in str(screen.query_one("#nr-status").render())
            await pilot.pause(0.5)
            assert app.screen is screen and stored_runs() == []
            # fixing it clears the message
            await pilot.press("end", "ctrl+u", "2")
            await until(pilot, lambda: settled(screen) and not screen.outcome.problems, what="revalidation")
            assert not row.query_one(".field-error").display
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is not screen and stored_runs() == []

    asyncio.run(scenario())


def test_launch_from_the_form_runs_to_finished_on_the_runs_screen(isolated_env):
    from textual.widgets import DataTable, Input, Select

    from dmltui.tui.app import DmlTuiApp
    from dmltui.tui.screens.runs import RunsScreen

    async def scenario():
        app = DmlTuiApp(poll_seconds=0.2)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_new_run(app, pilot)
            screen.query_one("#nr-dataset", Select).value = "digits"  # quickstart + digits: seconds on a CPU
            await until(pilot, lambda: settled(screen) and screen.baseline.get("data.dataset") == "digits", what="digits")
            form = screen.form
            for key, value in {"optim.epochs": "1", "data.image_size": "8", "sampler.batch_size": "128",
                               "eval.metrics": "e_recall@1", "eval.at_start": False, "eval.raw_pixel_baseline": False}.items():
                form.set_value(key, value)
            screen.query_one("#nr-gpus", Input).value = "cpu"
            screen.query_one("#nr-tags", Input).value = "tui"
            await pilot.pause()
            await until(pilot, lambda: settled(screen), what="validation")
            assert not screen.outcome.problems, screen.outcome.problems
            assert sorted(screen.last_request.overrides) == sorted(
                ["optim.epochs=1", "data.image_size=8", "sampler.batch_size=128", 'eval.metrics=["e_recall@1"]',
                 "eval.at_start=false", "eval.raw_pixel_baseline=false"])
            await pilot.press("ctrl+s")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen), timeout=60, what="back on the runs screen")
            [record] = stored_runs()
            assert record["presets"][-1].endswith("digits.toml") and record["tags"] == ["tui"]
            config = load_config(record)
            assert config["optim"]["epochs"] == 1 and config["data"]["image_size"] == 8
            table = app.screen.query_one(DataTable)
            await until(pilot, lambda: table.row_count == 1, timeout=10, what="the run listed")
            await until(pilot, lambda: (app.run_record(record["id"]) or {}).get("state") in ("finished", "failed", "crashed"),
                        timeout=150, what="the run ending")
            assert app.run_record(record["id"])["state"] == "finished"

    asyncio.run(scenario())


def test_sweep_mode_counts_and_validates_the_grid(isolated_env):
    from textual.widgets import Input, TextArea

    from dmltui.tui.app import DmlTuiApp
    from dmltui.tui.screens.new_run import PreviewScreen

    async def scenario():
        app = DmlTuiApp(poll_seconds=0.2)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_new_run(app, pilot)
            await pilot.press("ctrl+g")
            assert screen.sweep and app.focused is screen.query_one("#nr-grid", TextArea)
            await pilot.press(*"loss.name=margin,triplet")
            screen.query_one("#nr-seeds", Input).value = "0"
            await pilot.pause()
            assert str(screen.query_one("#nr-status").render()).startswith("2 runs")
            await until(pilot, lambda: settled(screen), what="validation")
            assert not screen.outcome.problems
            assert [(name, grid) for name, grid, _seed in screen.outcome.runs] == [
                ("quickstart-margin-s0", {"loss.name": "margin"}), ("quickstart-triplet-s0", {"loss.name": "triplet"})]
            assert "✓ valid" in str(screen.query_one("#nr-status").render())
            await pilot.press("ctrl+t")  # the dry run
            preview = await until(pilot, lambda: isinstance(app.screen, PreviewScreen) and app.screen, timeout=20, what="preview")
            text = "\n".join(str(s.render()) for s in preview.query("Static"))
            assert "2 runs would start" in text and "dmltui sweep quickstart --grid loss.name=margin,triplet --seeds 0" in text
            await pilot.press("escape")
            # a grid value the validator refuses is shown at the grid, and nothing can start
            screen.query_one("#nr-grid", TextArea).text = "loss.name=margin,nope"
            await until(pilot, lambda: settled(screen) and screen.outcome.problems, what="grid validation")
            assert screen.query_one("#nr-grid").has_class("-invalid")
            assert stored_runs() == []

    asyncio.run(scenario())


def test_slurm_is_not_offered_where_sbatch_is_missing_and_the_form_says_why(isolated_env, monkeypatch):
    from textual.widgets import Select

    from dmltui.tui.app import DmlTuiApp

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # a machine without SLURM's commands

    async def scenario():
        app = DmlTuiApp(poll_seconds=0.2)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_new_run(app, pilot)
            target = screen.query_one("#nr-on", Select)
            assert target.value == "local"
            with pytest.raises(InvalidSelectValueError):
                target.value = "slurm"
            target.focus()
            await pilot.pause()
            help_line = str(screen.query_one("#nr-help").render())
            assert "SLURM is not offered: 'sbatch' is not on the PATH of this machine" in help_line

    asyncio.run(scenario())


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM's commands are not on the PATH (.ci/slurm-up installs them)")
def test_slurm_target_validates_the_slurm_table_and_previews_on_slurm(isolated_env, tmp_path, monkeypatch):
    """Nothing is submitted here: the target's checks are those of `dmltui run --on slurm` (a bad [slurm] setting is
    one line at the target, and nothing starts), and the dry run shows the same command."""
    from textual.widgets import Input, Select

    from dmltui.tui.app import DmlTuiApp
    from dmltui.tui.screens.new_run import PreviewScreen

    config = tmp_path / "config.toml"
    config.write_text('[slurm]\npartion = "gpu"\n')
    monkeypatch.setenv("DMLTUI_CONFIG", str(config))

    async def scenario():
        app = DmlTuiApp(poll_seconds=0.2)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_new_run(app, pilot)
            screen.query_one("#nr-on", Select).value = "slurm"
            await until(pilot, lambda: settled(screen) and screen.last_request.on == "slurm", what="validation")
            assert screen.query_one("#nr-gpus", Input).disabled  # SLURM's GPUs are the [slurm] table's
            assert screen.query_one("#nr-on").has_class("-invalid")
            problems = str(screen.query_one("#nr-problems").render())
            assert "✗ on: slurm setting 'partion' is unknown; settings: partition, account" in problems
            await pilot.press("ctrl+s")
            await until(pilot, lambda: not screen.launching, what="the refusal")
            assert stored_runs() == [] and app.screen is screen
            config.write_text('[slurm]\npartition = "debug"\n')
            screen.schedule_validation(delay=0.01)
            await until(pilot, lambda: settled(screen) and not screen.local_errors, what="revalidation")
            assert str(screen.query_one("#nr-status").render()).startswith("1 run on SLURM · ✓ valid")
            await pilot.press("ctrl+t")
            preview = await until(pilot, lambda: isinstance(app.screen, PreviewScreen) and app.screen, timeout=20, what="preview")
            text = "\n".join(str(s.render()) for s in preview.query("Static"))
            assert "dmltui run quickstart --on slurm" in text and "--gpus" not in text

    asyncio.run(scenario())


# --------------------------------------------------------------------------- snapshots

SNAPSHOT_PRESETS = ("quickstart", "glyphs", "digits", "base", "margin-b12-d", "cub200")


@pytest.fixture
def few_presets(tmp_path, monkeypatch):
    """A fixed preset list, so the snapshots do not change whenever a preset is added to the project."""
    folder = tmp_path / "snapshot-presets"
    folder.mkdir()
    for name in SNAPSHOT_PRESETS:
        shutil.copy(REPO / "presets" / f"{name}.toml", folder / f"{name}.toml")
    monkeypatch.setattr("dmltui.home.preset_library", lambda: PresetLibrary([Path(folder)]))


def _snapshot_app():
    from dmltui.tui.app import DmlTuiApp

    return DmlTuiApp(poll_seconds=0)


def test_snapshot_new_run_80x24(few_presets, snap_compare):
    async def run_before(pilot):
        screen = await open_new_run(pilot.app, pilot)
        screen.query_one("#nr-preset-list").focus()
        await pilot.pause(0.2)

    assert snap_compare(_snapshot_app(), terminal_size=(80, 24), run_before=run_before)


def test_snapshot_new_run_with_errors_120x40(few_presets, snap_compare):
    from textual.widgets import TabbedContent

    async def run_before(pilot):
        screen = await open_new_run(pilot.app, pilot)
        screen.form.query_one(TabbedContent).active = "section-optim"
        screen.form.set_value("optim.epochs", "0")
        screen.form.set_value("optim.lr", "0.01")
        await pilot.pause()
        await until(pilot, lambda: settled(screen) and screen.outcome.problems, what="validation")
        screen.query_one("#nr-preset-list").focus()
        await pilot.pause(0.2)

    assert snap_compare(_snapshot_app(), terminal_size=(120, 40), run_before=run_before)


def test_tabs_are_built_when_opened_and_keep_what_was_set_before(isolated_env):
    from textual.widgets import TabbedContent

    from dmltui.tui.app import DmlTuiApp

    async def scenario():
        app = DmlTuiApp(poll_seconds=0.2)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_new_run(app, pilot)
            form = screen.form
            assert {row.spec.section for row in form.rows()} == {form.sections[0]}  # only the first tab is built
            form.set_value("optim.epochs", "3")  # a tab not opened yet
            assert form.values()["optim.epochs"] == "3" and form.values()["optim.lr"] == str(screen.baseline["optim.lr"])
            assert "optim.epochs=3" in form.overrides().overrides
            tabs = form.query_one(TabbedContent)
            assert str(tabs.get_tab("section-optim").label) == "optim*"
            tabs.active = "section-optim"
            await until(pilot, lambda: "optim.epochs" in {row.spec.key for row in form.rows()}
                        and form.row("optim.epochs").is_mounted, what="the optim tab built")
            await pilot.pause()
            row = form.row("optim.epochs")
            assert row.get_raw() == "3" and row.edited and "* epochs" in str(row.query_one(".field-label").render())
            assert form.row("optim.lr").get_raw() == str(screen.baseline["optim.lr"]) and not form.row("optim.lr").edited

    asyncio.run(scenario())


def test_keys_queued_behind_ctrl_o_go_to_the_preset_list_and_on(isolated_env):
    """Under load a terminal's keys arrive together: ctrl+o, then shift+tab x7 and "0-1" in one read. Each key must act
    where the previous one left the focus (tmux saw focus land short, and typed seeds go missing, when it did not)."""
    from textual import events
    from textual.widgets import Input, TabbedContent

    from dmltui.tui.app import DmlTuiApp

    async def scenario():
        app = DmlTuiApp(poll_seconds=0.2)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_new_run(app, pilot)
            screen.form.query_one(TabbedContent).active = "section-optim"
            await pilot.pause()
            screen.set_focus(screen.query_one("#field-optim-epochs"))
            await pilot.pause()
            driver = app._driver
            for key, char in [("ctrl+o", None), *[("shift+tab", None)] * 7, ("0", "0"), ("minus", "-"), ("1", "1")]:
                event = events.Key(key, char)
                event.set_sender(app)
                driver.send_message(event)  # no waiting in between: all of them queued before the first is handled
            await until(pilot, lambda: screen.query_one("#nr-seeds", Input).value == "0-1",
                        what=f"seeds 0-1 typed (focus: {screen.focused}, seeds: {screen.query_one('#nr-seeds', Input).value!r})")
            assert screen.focused is screen.query_one("#nr-seeds", Input)

    asyncio.run(scenario())
