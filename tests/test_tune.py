"""Hyperparameter search (dmltui tune): class-disjoint folds, the test split out of reach, search spaces checked
before anything starts, and a whole study through the real CLI (killed and continued, pruned, finalized)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import dmltui

from dmltui.tune import space as spaces
from dmltui.tune.study import StudySpec
from engine.config.presets import ConfigError, resolve
from engine.data import create_splits
from engine.data.folder import ImageList, class_folds

# ------------------------------------------------------------------------------------------------- folds


def _images(n_classes: int, per_class: int) -> ImageList:
    paths = [Path(f"c{c}/{i}.png") for c in range(n_classes) for i in range(per_class)]
    labels = np.repeat(np.arange(n_classes), per_class)
    return ImageList(paths, labels, [f"class{c}" for c in range(n_classes)])


@pytest.mark.parametrize("n_classes,folds", [(10, 4), (7, 2), (5, 5)])
def test_folds_partition_the_training_classes_and_each_fold_is_class_disjoint(n_classes, folds):
    train = _images(n_classes, 3)
    seen_val: list[str] = []
    for fold in range(folds):
        fit, val = class_folds(train, folds, fold)
        assert not set(fit.class_names) & set(val.class_names)  # class-disjoint
        assert sorted(fit.class_names + val.class_names) == sorted(train.class_names)
        assert val.class_names == [f"class{c}" for c in range(n_classes) if c % folds == fold]
        for part in (fit, val):  # labels renumbered 0..C-1 and still naming each image's own class
            assert sorted(set(part.labels.tolist())) == list(range(part.num_classes))
            assert all(part.class_names[label] == f"class{path.parent.name[1:]}" for path, label in zip(part.paths, part.labels))
        seen_val += val.class_names
    assert sorted(seen_val) == sorted(train.class_names)  # every class validates exactly once


def test_more_folds_than_classes_is_a_one_line_error():
    from engine.data import DatasetError

    with pytest.raises(DatasetError, match=r"data.folds=6 is more than the 5 training classes"):
        class_folds(_images(5, 2), 6, 0)


def test_a_run_without_the_test_split_has_none_to_evaluate(isolated_env):
    splits = create_splits("digits", folds=2, fold=1, with_test=False)
    assert splits.test is None and splits.val is not None
    # digits trains on 0-4: fold 1 of 2 holds the second and fourth of them
    assert splits.val.class_names == ["002.digit_1", "004.digit_3"]
    assert splits.train.class_names == ["001.digit_0", "003.digit_2", "005.digit_4"]


@pytest.mark.parametrize("overrides,message", [
    (["eval.test=false"], "eval.test=false needs a validation split"),
    (["eval.test=false", "data.folds=2", "eval.raw_pixel_baseline=true"], "raw_pixel_baseline reports on the test split"),
    (["data.folds=1"], "data.folds=1 leaves no class"),
    (["data.folds=3", "data.fold=3"], "data.fold=3 is not one of the 3 folds"),
    (["data.folds=2", "data.use_tv_split=true"], "both make a validation split"),
])
def test_the_protocols_settings_are_checked_by_the_config(overrides, message, isolated_env):
    with pytest.raises(ConfigError, match=message):
        resolve(["quickstart", "digits"], overrides)


def test_the_trainer_never_builds_the_test_split_when_told_not_to(isolated_env, tmp_path):
    """The enforcement is in the engine: with eval.test=false the trainer holds no test dataset at all, so no
    evaluation, checkpoint choice or baseline can read it."""
    from engine.rundir import RunDir
    from engine.trainer import Trainer

    resolved = resolve(["quickstart", "digits"], ["data.image_size=8", "optim.epochs=1", "eval.test=false", "data.folds=2", "eval.raw_pixel_baseline=false",
                                                  "eval.metrics=[\"map_at_r\"]", "eval.storage_metrics=[\"map_at_r\"]"])
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    run_dir.write_config(resolved.to_toml())
    trainer = Trainer(resolved.config, run_dir)
    trainer.build()
    assert set(trainer.eval_sets) == {"val"} and trainer.selection_split == "val"


# ------------------------------------------------------------------------------------------ search spaces


def test_space_forms_become_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    lr, beta, k, miner = spaces.parse_space(["optim.lr=loguniform(1e-6, 1e-3)", "loss.margin.beta=uniform(0.4,1.6)",
                                             "sampler.samples_per_class=int(2,4)", "miner.name=choice(distance,semihard)"])
    assert lr.distribution() == FloatDistribution(1e-6, 1e-3, log=True)
    assert beta.distribution() == FloatDistribution(0.4, 1.6)
    assert k.distribution() == IntDistribution(2, 4)
    assert miner.distribution() == CategoricalDistribution(("distance", "semihard"))
    assert spaces.overrides_for({"optim.lr": 1e-4, "miner.name": "distance", "eval.at_start": True, "sampler.samples_per_class": 3}) \
        == ["optim.lr=0.0001", 'miner.name="distance"', "eval.at_start=true", "sampler.samples_per_class=3"]


@pytest.mark.parametrize("text,message", [
    ("optim.lr", "expected KEY=FORM"),
    ("optim.lr=normal(0,1)", "expected KEY=FORM"),
    ("optim.lr=loguniform(0,1e-3)", "needs a positive low bound"),
    ("optim.lr=uniform(1e-3,1e-4)", "low bound must be below"),
    ("optim.lr=uniform(1e-3)", "takes two bounds"),
    ("optim.lr=uniform(a,1)", "'a' is not a number"),
    ("miner.name=choice(distance)", "at least two values"),
    ("data.folds=int(2,4)", "set by the tuning protocol"),
    ("eval.test=choice(true,false)", "set by the tuning protocol"),
])
def test_malformed_spaces_are_one_line_errors(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        spaces.parse_space([text])
    assert len(caught.value.lines) == 1


@pytest.mark.parametrize("text,message", [
    ("optim.lrr=loguniform(1e-6,1e-3)", "not a config key (did you mean 'optim.lr'?)"),
    ("optim.epochs=uniform(1,3)", "an integer key; use int(a,b)"),
    ("miner.name=int(1,3)", "needs an integer key"),
    ("optim.epochs=int(0,3)", "optim.epochs=0 is refused"),
    ("miner.name=choice(distance,nosuchminer)", 'miner.name="nosuchminer" is refused'),
])
def test_spaces_are_checked_against_the_config_schema(text, message, tiny):
    from dmltui.tune.tuner import check_spec

    spec = StudySpec(name="s", presets=[tiny], dataset="", space=[text], trials=2, folds=2, metric="e_recall@1")
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_spec(spec)


def test_a_bad_space_is_refused_through_the_cli_with_nothing_launched(tiny, isolated_env):
    result = dmltui("tune", tiny, "--space", "optim.epochs=int(0,3)", "--trials", "2", "--folds", "2")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --space optim.epochs=int(0,3)") and "Traceback" not in result.stderr
    assert not (isolated_env / "studies").exists() or not any((isolated_env / "studies").rglob("journal.log"))
    assert not (isolated_env / "runs").exists() or not any((isolated_env / "runs").iterdir())
    for args, message in ((["--metric", "nosuch"], "--metric nosuch"), (["--sampler", "grid"], "--sampler 'grid'"),
                          (["--folds", "1"], "--folds 1"), (["--set", "data.folds=3"], "--set data.folds")):
        result = dmltui("tune", tiny, "--space", "optim.lr=loguniform(1e-5,1e-3)", *args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_status_of_an_unknown_study_names_the_known_ones(isolated_env):
    result = dmltui("tune", "status", "nosuch")
    assert result.returncode == 3 and result.stderr.strip() == "error: no study 'nosuch'; `dmltui tune PRESET DATASET` starts one"
    listed = dmltui("tune", "status", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


# ----------------------------------------------------------------------------------- a study, end to end


def _runs(*args: str) -> list[dict]:
    result = dmltui("runs", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _tags(record: dict, prefix: str) -> str | None:
    return next((t[len(prefix):] for t in record["tags"] if t.startswith(prefix)), None)


GLYPHS_SMALL = """extends = ["quickstart"]
[optim]
epochs = 3
[eval]
metrics = ["map_at_r"]
storage_metrics = ["map_at_r"]
at_start = false
raw_pixel_baseline = false
"""


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 4 minutes alone; the slow suite runs it beside the SLURM tests
def test_a_study_killed_and_continued_prunes_the_hopeless_and_finalizes_on_test(tiny, isolated_env, tmp_path):
    """6 trials x 2 folds, one trial's folds at a time. The tuner is killed (SIGKILL) once trials are under way and
    started again with the same command: the study ends with exactly 6 trials and every (trial, fold) run once.
    lr=1e-9 cannot learn: with the median pruner from the first finished trial on, some trial of it is pruned and its
    runs are stopped and tagged. No fold run has a test metric; finalize's runs each evaluate test exactly once."""
    # glyphs, not digits: digits' 5 training classes make folds of 2-3 classes, on which training hardly beats an
    # untrained network; on glyphs' 78 lr=1e-3 is ahead of lr=1e-9 from the first epoch (MAP@R 0.07 against 0.04)
    (isolated_env / "presets" / "glyphs-small.toml").write_text(GLYPHS_SMALL)
    command = ["tune", "glyphs-small", "--name", "study1", "--space", "optim.lr=choice(0.001,1e-9)", "--trials", "6",
               "--folds", "2", "--metric", "map_at_r", "--sampler", "random", "--prune-after", "1",
               "--parallel", "2", "--poll", "0.2"]
    script = Path(sys.executable).with_name("dmltui")
    first = subprocess.Popen([str(script), *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    journal = isolated_env / "studies" / "study1" / "journal.log"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        tuning = [r for r in _runs("--tag", "study:study1")] if journal.exists() else []
        if len({_tags(r, "trial:") for r in tuning}) >= 2:  # the second trial is launched: mid-study
            break
        time.sleep(1)
    assert first.poll() is None, first.stdout.read()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    again = dmltui(*command, "--json", timeout=900)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["counts"]["total"] == 6 and summary["counts"]["running"] == 0
    assert "continuing" in again.stderr  # it picked up the trial the killed tuner had running
    states = [t["state"] for t in summary["trials"]]
    assert states.count("complete") >= 1 and states.count("pruned") >= 1 and "fail" not in states, \
        [(t["number"], t["state"], t["params"], t["reason"]) for t in summary["trials"]]

    runs = _runs("--tag", "study:study1")
    keys = [(_tags(r, "trial:"), _tags(r, "fold:")) for r in runs]
    assert len(keys) == len(set(keys)), "a (trial, fold) run was started twice"
    for trial in summary["trials"]:
        mine = sorted(r["id"] for r in runs if _tags(r, "trial:") == str(trial["number"]))
        assert mine == sorted(trial["runs"])
        assert len(mine) == 2  # both folds of every trial ran (pruning happens after both reported an epoch)
        if trial["state"] == "complete":
            assert all(r["state"] == "finished" for r in runs if r["id"] in mine)
            values = []
            for run_id in mine:
                [record] = [r for r in runs if r["id"] == run_id]
                values.append(record["best"]["val/map_at_r"]["value"])
            assert trial["value"] == pytest.approx(sum(values) / 2)
        if trial["state"] == "pruned":  # (a good lr may be pruned too, when below the median by chance)
            assert all("pruned" in r["tags"] for r in runs if r["id"] in mine)
            assert any(r["state"] == "stopped" for r in runs if r["id"] in mine)

    shown = [(t["number"], t["state"], t["params"], t["intermediate"]) for t in summary["trials"]]
    assert any(t["state"] == "pruned" and t["params"]["optim.lr"] == 1e-9 for t in summary["trials"]), shown
    for record in runs:  # the search never saw the test split
        lines = (Path(record["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        assert lines and all(json.loads(line).get("split") != "test" for line in lines)
        assert "test split left out" in (Path(record["run_dir"]) / "train.log").read_text()

    # finalize trains for the mean over the best trial's folds of the epoch of their best validation MAP@R
    best_epochs = []
    for run_id in summary["best"]["runs"]:
        [record] = [r for r in runs if r["id"] == run_id]
        curve = [json.loads(line) for line in (Path(record["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        scores = {e["epoch"]: e["metrics"]["map_at_r"] for e in curve if e["kind"] == "eval" and e["split"] == "val"}
        best_epochs.append(min(epoch for epoch, score in scores.items() if score == max(scores.values())))
    epochs = int(sum(best_epochs) / len(best_epochs) + 0.5)
    finalized = dmltui("tune", "finalize", "study1", "--seeds", "0-1", "--json")
    assert finalized.returncode == 0, finalized.stderr
    assert finalized.stderr.startswith(f"{epochs} epochs: the mean over trial {summary['best']['number']}'s 2 folds")
    final_runs = json.loads(finalized.stdout)
    assert [r["seed"] for r in final_runs] == [0, 1]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and any(r["state"] not in ("finished", "failed", "crashed")
                                              for r in _runs("--tag", "tuned:6")):
        time.sleep(1)
    for record in _runs("--tag", "tuned:6"):
        assert record["state"] == "finished"
        evals = [json.loads(line) for line in (Path(record["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        tests = [e for e in evals if e.get("split") == "test"]
        assert len(tests) == 1 and tests[0]["epoch"] == epochs and "map_at_r" in tests[0]["metrics"]
    status = json.loads(dmltui("tune", "status", "study1", "--json").stdout)
    assert status["final"]["mean"] is not None and len(status["final"]["values"]) == 2
    assert status["final"]["finished"] == status["final"]["launched"] == 2
    assert status["final"]["epochs"]["epochs"] == epochs
    again_final = dmltui("tune", "finalize", "study1")
    assert again_final.returncode == 2 and "finalized already" in again_final.stderr

    compared = dmltui("compare", "--group-by", "preset", "--json")
    assert compared.returncode == 0, compared.stderr
    assert "glyphs-small (tuned, 6 trials)" in compared.stdout
    assert "study1-t" not in compared.stdout  # the fold runs have no test results: left out of tables


def _stop_live(tag: str) -> list[dict]:
    """Stop (as `dmltui runs stop` does) every live run tagged *tag*; returns the stopped records."""
    live = [r["id"] for r in _runs("--tag", tag) if r["state"] in ("queued", "running", "requeued")]
    if not live:
        return []
    stopped = dmltui("runs", "stop", *live, "--json")
    assert stopped.returncode == 0, stopped.stderr
    return json.loads(stopped.stdout)


def test_one_tuner_per_study_a_second_process_is_refused_and_touches_nothing(tiny, isolated_env):
    """Two `dmltui tune` processes on one study at once: the second exits 4 with one line, and launches no run.
    The first's one trial trains both folds at once (--parallel 2) for far more epochs than the test lasts: while the
    second tries, the first is still tuning and has launched everything it ever will, so any new run or run dir
    would be the second's. The first's runs are stopped at the end."""
    script = Path(sys.executable).with_name("dmltui")
    command = [str(script), "tune", tiny, "--name", "race", "--space", "optim.lr=loguniform(1e-4,1e-2)", "--trials", "1",
               "--folds", "2", "--parallel", "2", "--set", "optim.epochs=100000", "--metric", "e_recall@1",
               "--poll", "0.2"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(launched := _runs("--tag", "study:race")) < 2:
            assert first.poll() is None, f"the first tuner ended: {first.stdout.read()}"
            assert time.monotonic() < deadline, "the first tuner did not launch its trial's two folds within 120 s"
            time.sleep(0.5)
        assert sorted((_tags(r, "trial:"), _tags(r, "fold:")) for r in launched) == [("0", "0"), ("0", "1")]
        ids_before = {r["id"] for r in _runs()}
        dirs_before = sorted(p.name for p in (isolated_env / "runs").iterdir())

        second = dmltui(*command[1:])
        assert second.returncode == 4, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "is being tuned by another process" in lines[0]
        assert first.poll() is None, first.stdout.read()  # refused by the lock: the first was still tuning

        after = _runs()
        assert {r["id"] for r in after} == ids_before  # the second launched no run (the first had no more to launch)
        assert sorted(p.name for p in (isolated_env / "runs").iterdir()) == dirs_before  # nor made a run dir
        assert sorted(r["id"] for r in after if "study:race" in r["tags"]) == sorted(r["id"] for r in launched)
        status = json.loads(dmltui("tune", "status", "race", "--json").stdout)
        assert status["counts"]["total"] == 1 and status["counts"]["running"] == 1  # nor asked the study for a trial
        missing = dmltui("tune", "resume", "nosuch")
        assert missing.returncode == 3 and len(missing.stderr.strip().splitlines()) == 1
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        stopped = _stop_live("study:race")  # the fold runs outlive their tuner: nothing is left training
    assert sorted(r["id"] for r in stopped) == sorted(r["id"] for r in launched)
    assert all(r["state"] == "stopped" for r in stopped), [(r["id"], r["state"]) for r in stopped]
    assert {r["id"] for r in _runs()} == ids_before
    assert not [r["id"] for r in _runs() if r["state"] in ("queued", "running", "requeued")]
