"""The TUI's Studies view (Pilot, a snapshot) and the plain functions under it, over studies made through Optuna
directly in the layout ``dmltui.tune.study`` keeps: no run is trained."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime

import pytest
from conftest import tables_settled

from dmltui.testing import fake_run
from dmltui.tui.studies_view import (
    ParamAxis,
    decade_ticks,
    history,
    importance_bar,
    importance_reason,
    param_axes,
    param_importances,
    scatter,
    steps,
    study_cells,
    tick_labels,
    trial_cells,
)
from dmltui.tune import study as studies

CLOCK = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
SPACE = ["optim.lr=loguniform(1e-6,1e-3)", "loss.margin.beta=uniform(0.4,1.6)", "miner.name=choice(distance,semihard)"]
METRIC = "e_recall@1"


def make_study(name: str, *, space=SPACE, requested: int = 8, final_runs=()):
    """An empty stored study of *space*, as ``dmltui tune`` creates one."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=studies.storage(name), direction="maximize")
    spec = studies.StudySpec(name=name, presets=["margin-b12-d"], dataset="cub200", space=list(space), trials=requested,
                             folds=2, metric=METRIC)
    study.set_user_attr(studies.SPEC_ATTR, spec.to_dict())
    if final_runs:
        study.set_user_attr(studies.FINAL_ATTR, list(final_runs))
    return study


def add_trial(study, params, *, value=None, state="complete", intermediate=None, runs=(), reason=None):
    """A trial as the tuner leaves it: its params, value, per-epoch means and its fold runs' ids."""
    import optuna

    from dmltui.tune.space import parse_param

    spec = studies.spec_of(study)
    distributions = {p.key: p.distribution() for p in map(parse_param, spec.space) if p.key in params}
    attrs = {"runs": list(runs), **({"reason": reason} if reason else {})}
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=distributions, value=value, state=optuna.trial.TrialState[state.upper()],
        intermediate_values=intermediate or {}, user_attrs=attrs))


def lr_value(lr: float, beta: float) -> float:
    """The objective of the test studies: the learning rate decides, beta barely matters."""
    return round(0.7 + 0.04 * math.log10(lr) + 0.002 * beta, 6)


def fold_runs(home, name: str, trial: int, *, first_index: int, state: str = "finished", pruned: bool = False):
    tags = [f"study:{name}", f"trial:{trial}", "tuning", *(["pruned"] if pruned else [])]
    return [fake_run(home, name=f"{name}-t{trial}-f{fold}", index=first_index + fold, state=state, epochs=4,
                     epoch=None if state == "finished" else 2, tags=[*tags, f"fold:{fold}"], splits=("val",),
                     seed=fold, ceiling=0.5 + 0.02 * fold)
            for fold in range(2)]


@pytest.fixture
def searched(isolated_env):
    """A study of three parameters: four complete trials (trial 3 the best), one pruned, one failed, one running;
    trials 3 and 4 have their fold runs in the store, and two finalized runs were trained on the best config."""
    home = isolated_env
    best_runs = fold_runs(home, "margin-lr", 3, first_index=0)
    pruned_runs = fold_runs(home, "margin-lr", 4, first_index=2, state="stopped", pruned=True)
    finals = [fake_run(home, name=f"margin-b12-d-tuned-margin-lr-s{seed}", index=10 + seed, seed=seed, epochs=4,
                       tags=["study:margin-lr", "tuned:7"], ceiling=0.6 + 0.01 * seed) for seed in range(2)]
    study = make_study("margin-lr", final_runs=[r["id"] for r in finals])
    for lr, beta, miner in ((1e-5, 0.6, "distance"), (1e-4, 1.2, "distance"), (3e-6, 1.0, "semihard")):
        add_trial(study, {"optim.lr": lr, "loss.margin.beta": beta, "miner.name": miner}, value=lr_value(lr, beta),
                  intermediate={1: 0.3, 2: lr_value(lr, beta)})
    add_trial(study, {"optim.lr": 5e-4, "loss.margin.beta": 0.8, "miner.name": "semihard"}, value=lr_value(5e-4, 0.8),
              intermediate={1: 0.4, 2: lr_value(5e-4, 0.8)}, runs=[r["id"] for r in best_runs])
    add_trial(study, {"optim.lr": 2e-6, "loss.margin.beta": 1.5, "miner.name": "distance"}, state="pruned",
              intermediate={1: 0.2, 2: 0.25}, runs=[r["id"] for r in pruned_runs])
    add_trial(study, {"optim.lr": 1e-3, "loss.margin.beta": 0.5, "miner.name": "semihard"}, state="fail",
              reason="loss became nan at epoch 1")
    add_trial(study, {"optim.lr": 2e-4, "loss.margin.beta": 1.1, "miner.name": "distance"}, state="running",
              intermediate={1: 0.41})
    return {"study": study, "best_runs": best_runs, "pruned_runs": pruned_runs, "finals": finals}


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
            await pilot.pause(0.2)
            await scenario(pilot)

    asyncio.run(main())


def text_of(widget) -> str:
    return str(widget.render())


def printed(widget) -> str:
    """What a Static shows, as plain text (its content may be any Rich renderable)."""
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(widget.content)
    return console.export_text()


def cell(table, row: str, column: str) -> str:
    return str(table.get_cell(row, column))


# --------------------------------------------------------------------------- plain functions


def test_log_axes_tick_at_powers_of_ten():
    assert decade_ticks(1e-6, 1e-3) == [1e-6, 1e-5, 1e-4, 1e-3]
    assert decade_ticks(16, 512) == [16.0, 512.0]  # one power of ten inside: the bounds instead
    assert tick_labels([1e-6, 1e-5, 1e-4, 1e-3]) == ["1e-6", "1e-5", "1e-4", "1e-3"]  # one exponent: all have one
    assert tick_labels([16.0, 512.0]) == ["16", "512"] and tick_labels([2.5e-6, 1.0]) == ["2.5e-6", "1e0"]


def test_scatter_puts_choices_at_positions_and_log_keys_on_a_log_axis(searched):
    summary = studies.read_summary("margin-lr")
    lr, beta, miner = param_axes(summary["spec"])
    assert (lr.log, beta.log, miner.choices) == (True, False, ("distance", "semihard"))
    points = scatter(summary, lr)
    assert points.log and len(points.xs) == 4  # the complete trials only
    # drawn as log10 of the values on a linear axis, ticked at the powers of ten
    assert points.ticks == pytest.approx([-6, -5, -4, -3]) and points.xlim == pytest.approx((-6, -3))
    assert points.labels == ["1e-6", "1e-5", "1e-4", "1e-3"]
    assert sorted(points.xs) == pytest.approx([math.log10(v) for v in (3e-6, 1e-5, 1e-4, 5e-4)])
    choices = scatter(summary, miner)
    assert sorted(choices.xs) == [0.0, 0.0, 1.0, 1.0] and choices.labels == ["distance", "semihard"]
    assert choices.xlim == (-0.5, 1.5)
    assert scatter(summary, beta).xlim == (0.4, 1.6)


def test_history_and_the_best_so_far_steps(searched):
    summary = studies.read_summary("margin-lr")
    data = history(summary)
    assert data.trials == [0, 1, 2, 3]
    assert data.best_trials == [0, 1, 2, 3, 4, 5, 6]  # the best so far continues over unfinished trials
    assert data.best_values[3] == data.best_values[6] == summary["best"]["value"]
    assert steps([0, 1, 2], [0.1, 0.3, 0.3]) == ([0, 1, 1, 2, 2], [0.1, 0.1, 0.3, 0.3, 0.3])


def test_trial_cells_show_unfinished_values_dim_in_parentheses(searched):
    summary = studies.read_summary("margin-lr")
    axes = param_axes(summary["spec"])
    rows = {row["number"]: row for row in summary["trials"]}
    best = [c.plain for c in trial_cells(rows[3], axes, 3)]
    assert best == ["3", "complete", f"{lr_value(5e-4, 0.8):.4f}", "2", "0.0005", "0.8", "semihard"]
    assert trial_cells(rows[3], axes, 3)[2].style == "bold green"
    assert [c.plain for c in trial_cells(rows[6], axes, 3)][:4] == ["6", "running", "(0.4100)", "1"]
    assert [c.plain for c in trial_cells(rows[5], axes, 3)][:3] == ["5", "fail", "-"]


def test_importances_explain_why_not_and_never_raise(isolated_env):
    single = make_study("one-param", space=SPACE[:1])
    add_trial(single, {"optim.lr": 1e-4}, value=0.5)
    reason = importance_reason(studies.read_summary("one-param"))
    assert reason.startswith("one searched parameter (optim.lr)")
    few = make_study("few")
    add_trial(few, {"optim.lr": 1e-4, "loss.margin.beta": 1.0, "miner.name": "distance"}, value=0.5)
    assert importance_reason(studies.read_summary("few")) == \
        "parameter importances need at least 2 complete trials; this study has 1"
    add_trial(few, {"optim.lr": 1e-5, "loss.margin.beta": 0.5, "miner.name": "semihard"}, value=0.5)
    flat = param_importances("few", studies.read_summary("few"))  # equal values: fANOVA finds no variance to share
    assert flat.values == {} and flat.reason.startswith("Optuna could not rank the parameters: ")
    assert importance_bar(1.0, 4) == "████" and importance_bar(0.5, 3) == "█▌" and importance_bar(0.0, 4) == ""


def test_the_studies_list_row_of_an_unreadable_study():
    cells = study_cells("torn", None, "journal is broken")
    assert cells["name"] == "torn" and cells["what"].plain == "journal is broken" and cells["best"] == "-"


def test_param_axes_keep_the_space_order():
    axes = param_axes({"space": SPACE})
    assert [a.key for a in axes] == ["optim.lr", "loss.margin.beta", "miner.name"]
    assert axes[0] == ParamAxis("optim.lr", "loguniform", 1e-6, 1e-3)


# --------------------------------------------------------------------------- the Studies view (Pilot)


def test_S_opens_the_study_with_its_trials_best_runs_and_importances(searched):
    from dmltui.tui.screens.studies import StudyScreen
    from dmltui.tui.widgets.study_charts import ImportancePanel

    app = app_for_tests()
    best_runs, finals = searched["best_runs"], searched["finals"]

    async def scenario(pilot):
        await wait_for(pilot, lambda: app.run_record(finals[-1]["id"]) is not None)
        await pilot.press("S")  # one study: its view directly
        await wait_for(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.summary is not None)
        screen = app.screen
        trials = screen.query_one("#study-trials")
        assert trials.row_count == 7
        assert [str(c.label) for c in trials.columns.values()][4:] == ["optim.lr", "loss.margin.beta", "miner.name"]
        assert cell(trials, "4", "state") == "pruned" and cell(trials, "4", "value") == "(0.2500)"
        header = text_of(screen.query_one("#study-header"))
        assert "margin-b12-d on cub200 · 2-fold class-disjoint validation · maximising e_recall@1" in header
        assert "trials 7/8: 4 complete, 1 pruned, 1 running, 1 failed" in header
        assert f"best {lr_value(5e-4, 0.8):.4f} (trial 3)" in header
        values = [f["best"]["test/e_recall@1"]["value"] for f in finals]
        mean, std = sum(values) / 2, abs(values[0] - values[1]) / 2
        assert f"finalized: test e_recall@1 x100 {100 * mean:.2f} ± {100 * std:.2f}, n = 2/2 seeds" in header
        # the cursor starts on the best trial, whose fold runs show beneath
        assert screen.cursor_trial()["number"] == 3
        runs = screen.query_one("#trial-runs")
        assert [str(runs.get_row_at(i)[0]) for i in range(runs.row_count)] == ["0", "1"]
        fold0 = best_runs[0]
        assert cell(runs, fold0["id"], "val") == f"{fold0['best']['val/e_recall@1']['value']:.4f}"
        assert "trial 3 complete" in text_of(screen.query_one("#trial-note"))
        tabs = screen.query_one("#study-tabs")
        for key, tab in (("2", "history"), ("3", "params")):
            await pilot.press(key)
            await pilot.pause(0.1)
            assert tabs.active == tab  # and stays: the focus left on the trials table does not pull it back
        assert len(screen.query(".param-scatter")) == 3
        await pilot.resize_terminal(100, 30)  # the scatters draw again, the log-scaled one too
        await pilot.pause(0.2)
        await pilot.press("4")
        panel = screen.query_one(ImportancePanel)
        await wait_for(pilot, lambda: screen.importances is not None, timeout=30)  # fANOVA, in a worker
        assert screen.importances.reason is None and screen.importances.trials == 4
        assert max(screen.importances.values, key=screen.importances.values.get) == "optim.lr"
        shown = printed(panel)
        assert "over 4 complete trials" in shown and shown.index("optim.lr") < shown.index("miner.name")

    run_app(app, scenario)


def test_selecting_a_trial_shows_its_fold_runs_and_enter_opens_one(searched):
    from dmltui.tui.screens.run import RunScreen
    from dmltui.tui.screens.studies import StudyScreen

    app = app_for_tests()
    pruned_runs = searched["pruned_runs"]

    async def scenario(pilot):
        await wait_for(pilot, lambda: app.run_record(pruned_runs[-1]["id"]) is not None)
        app.push_screen(StudyScreen("margin-lr"))
        await wait_for(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.summary is not None)
        screen = app.screen
        runs = screen.query_one("#trial-runs")
        await pilot.press("down")  # from the best trial (3) to the pruned one
        await wait_for(pilot, lambda: "trial 4 pruned" in text_of(screen.query_one("#trial-note")))
        assert "at epoch 2" in text_of(screen.query_one("#trial-note"))
        assert runs.row_count == 2 and cell(runs, pruned_runs[1]["id"], "state") == "stopped (pruned)"
        await pilot.press("down")  # the failed trial: no fold run, the reason
        await wait_for(pilot, lambda: "loss became nan" in text_of(screen.query_one("#trial-note")))
        assert runs.row_count == 0
        await pilot.press("up", "enter")  # enter on a trial: to its runs
        assert screen.focused is runs
        await pilot.press("down", "enter")  # enter on a run: the run screen
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
        assert app.screen.run_id == pruned_runs[1]["id"]
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)

    run_app(app, scenario)


def test_several_studies_are_listed_and_a_new_trial_appears_while_open(searched):
    from dmltui.tui.screens.studies import StudiesScreen, StudyScreen

    single = make_study("lr-only", space=SPACE[:1], requested=3)
    add_trial(single, {"optim.lr": 1e-4}, value=0.5)
    app = app_for_tests()

    async def scenario(pilot):
        await pilot.press("S")
        await wait_for(pilot, lambda: isinstance(app.screen, StudiesScreen) and app.screen.summaries)
        listing = app.screen.query_one("#study-list")
        assert [str(listing.get_row_at(i)[0]) for i in range(2)] == ["lr-only", "margin-lr"]
        assert cell(listing, "margin-lr", "trials") == "7/8" and cell(listing, "lr-only", "best") == "0.5000"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.importances is not None)
        screen = app.screen
        assert screen.study_name == "lr-only" and screen.query_one("#study-trials").row_count == 1
        assert screen.importances.reason.startswith("one searched parameter")
        add_trial(single, {"optim.lr": 1e-5}, value=0.7)  # the tuner finished another trial meanwhile
        await wait_for(pilot, lambda: screen.query_one("#study-trials").row_count == 2, timeout=5)
        assert "best 0.7000 (trial 1)" in text_of(screen.query_one("#study-header"))
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, StudiesScreen))
        await wait_for(pilot, lambda: cell(listing, "lr-only", "trials") == "2/3", timeout=5)

    run_app(app, scenario)


def test_without_studies_the_view_says_how_to_start_one_and_shows_the_first(isolated_env):
    from dmltui.tui.screens.studies import StudiesScreen

    app = app_for_tests()

    async def scenario(pilot):
        await pilot.press("S")
        await wait_for(pilot, lambda: isinstance(app.screen, StudiesScreen) and app.screen.summaries is not None)
        empty = app.screen.query_one("#studies-empty")
        assert empty.display and not app.screen.query_one("#study-list").display
        assert "No studies yet" in text_of(empty) and "uv run dmltui tune margin-b12-d cub200 \\\n    --space" in text_of(empty)
        make_study("started")  # `dmltui tune` created it: no trial yet
        await wait_for(pilot, lambda: app.screen.query_one("#study-list").display, timeout=5)
        assert cell(app.screen.query_one("#study-list"), "started", "trials") == "0/8"
        await pilot.press("question_mark")  # the help lists the screen's keys
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        await pilot.press("escape", "escape")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunsScreen")

    run_app(app, scenario)


# --------------------------------------------------------------------------- snapshots


def open_study(*keys: str):
    async def run_before(pilot):
        from dmltui.tui.screens.studies import StudyScreen

        app = pilot.app
        await wait_for(pilot, lambda: len(app.monitor.records) == 6)
        await pilot.press("S")
        await wait_for(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.summary is not None
                       and app.screen.query_one("#trial-runs").row_count == 2)
        await pilot.press(*keys)
        await tables_settled(pilot)

    return run_before


@pytest.mark.parametrize("tab", ["1", "3"])
def test_snapshot_study_screen(snap_compare, searched, tab):
    assert snap_compare(app_for_tests(poll_seconds=0), terminal_size=(120, 40), run_before=open_study(tab))
