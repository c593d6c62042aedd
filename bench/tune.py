"""The tuner's cost: its overhead per trial beyond the runs it waits for, and ``tune status`` on a 500-trial study.

    uv run python bench/tune.py [--trials 4] [--status-trials 500] [--json]

- ``overhead_per_trial_s``: a study of ``--trials`` trials x 2 folds (digits at 8x8, one epoch, one run at a time)
  run by the tuner in this process, polling every 0.2 s. The study's wall time minus the runs' own times (run dir
  made to final state written), per trial: what the tuner adds between runs, noticing that a run ended, telling
  Optuna, asking for the next trial, resolving and checking its configs, making its run dirs.
- ``tuner_busy_per_trial_s``: the tuner's own work in its loop (not its sleeping), per trial.
- ``status_cold_s`` / ``status_warm_s``: ``dmltui tune status NAME --json`` on a study of ``--status-trials`` trials
  (complete and pruned, 10 reported epochs each), first with no summary cached (Optuna replays the journal), then
  with the cached summary. ``cli_floor_s``: ``dmltui tune status --json`` in a dmltui home without studies, the
  command line's own start (typer imports pydantic to build any command: about 0.2 s of it), in the same run;
  ``status_warm_over_floor`` is the ratio, and ``status_own_s`` the difference.

Targets (issue 15): overhead <= 1 s per trial beyond the runs; status <= 0.5 s at 500 trials.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime

from _common import dmltui, scratch_home

TINY = """extends = ["quickstart", "digits"]
[data]
image_size = 8
[optim]
epochs = 1
[eval]
metrics = ["map_at_r"]
storage_metrics = ["map_at_r"]
at_start = false
"""


def _seconds(record: dict, key: str) -> float:
    return datetime.fromisoformat(record[key]).timestamp()


def tuner_overhead(trials: int) -> dict:
    from dmltui import runs as run_ops
    from dmltui.tune.study import StudySpec
    from dmltui.tune.tuner import Target, Tuner, check_spec, open_study

    spec = StudySpec(name="bench", presets=["tiny"], dataset="", space=["optim.lr=loguniform(1e-4,1e-2)"], trials=trials,
                     folds=2, metric="map_at_r", sampler="random", pruner="none")
    check_spec(spec)
    study, spec = open_study(spec)
    tuner = Tuner(study, spec, Target(gpus="cpu", parallel=1), poll_seconds=0.2)
    started = time.time()
    summary = tuner.run()
    wall = time.time() - started
    store = run_ops.open_store()
    records = [store.get(run_id) for trial in summary["trials"] for run_id in trial["runs"]]
    own = sum(_seconds(r, "ended_at") - _seconds(r, "created_at") for r in records)
    return {"trials": trials, "runs": len(records), "study_wall_s": round(wall, 2), "runs_s": round(own, 2),
            "overhead_per_trial_s": round((wall - own) / trials, 3),
            "tuner_busy_per_trial_s": round(tuner.busy_seconds / trials, 3)}


def big_study(name: str, trials: int) -> None:
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from dmltui.tune import study as studies

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=studies.storage(name), direction="maximize")
    study.set_user_attr(studies.SPEC_ATTR, studies.StudySpec(
        name=name, presets=["tiny"], dataset="digits", space=["optim.lr=loguniform(1e-6,1e-2)", "loss.margin.beta=uniform(0.4,1.6)"],
        trials=trials, folds=4).to_dict())
    distributions = {"optim.lr": FloatDistribution(1e-6, 1e-2, log=True), "loss.margin.beta": FloatDistribution(0.4, 1.6)}
    for number in range(trials):
        pruned = number % 3 == 2
        curve = {epoch: 0.3 + 0.01 * epoch + 0.0001 * number for epoch in range(1, 4 if pruned else 11)}
        study.add_trial(create_trial(
            params={"optim.lr": 10 ** (-6 + 4 * (number % 97) / 97), "loss.margin.beta": 0.4 + 1.2 * (number % 13) / 13},
            distributions=distributions, intermediate_values=curve, user_attrs={"runs": [f"run-{number}-{f}" for f in range(4)]},
            value=None if pruned else max(curve.values()), state=TrialState.PRUNED if pruned else TrialState.COMPLETE))


def _timed(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    dmltui(args, env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--status-trials", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with scratch_home({"tiny": TINY}) as (home, env):
        env["OMP_NUM_THREADS"] = "1"
        os.environ.update(env)  # the tuner runs in this process
        result = {"overhead": tuner_overhead(args.trials)}

        big_study("big", args.status_trials)
        empty = {**env, "DMLTUI_HOME": str(home / "empty")}
        _timed(["tune", "status", "--json"], empty)  # warms the bytecode cache
        floor = min(_timed(["tune", "status", "--json"], empty) for _ in range(3))
        cold = _timed(["tune", "status", "big", "--json"], env)
        warm = min(_timed(["tune", "status", "big", "--json"], env) for _ in range(3))
        shown = json.loads(dmltui(["tune", "status", "big", "--json"], env).stdout)
        assert shown["counts"]["total"] == args.status_trials
        result["status"] = {"trials": args.status_trials, "status_cold_s": round(cold, 3), "status_warm_s": round(warm, 3),
                            "cli_floor_s": round(floor, 3), "status_warm_over_floor": round(warm / floor, 2),
                            "status_own_s": round(warm - floor, 3)}
    result["targets"] = {"overhead_per_trial_s": 1.0, "status_s": 0.5}
    result["ok"] = result["overhead"]["overhead_per_trial_s"] <= 1.0 and result["status"]["status_warm_s"] <= 0.5
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
