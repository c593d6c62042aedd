"""The honest tuning protocol (Musgrave et al., "A Metric Learning Reality Check", 2020) on Optuna's ask/tell.

A trial trains one run per class-disjoint fold of the training classes (``data.folds``/``data.fold``) with
``eval.test=false``: the engine then never loads the test split, so no choice the search makes can have seen it.
The trial's value is the mean over its folds of each fold's best validation value of the study's metric. After each
evaluated epoch, the folds' mean is reported to Optuna, whose pruner may stop the trial: its runs are stopped through
:func:`dmltui.runs.stop` (as ``dmltui runs stop`` does) and tagged ``pruned``.

The tuner keeps no state of its own: the study is Optuna's journal and the runs are in the store, tagged
``study:<name>``, ``trial:<n>`` and ``fold:<k>``. Killed and started again, it re-attaches to the running trials'
runs (which kept training), launches the folds a trial had not launched yet, and asks for new trials only while the
study has fewer than it was asked for: no trial is lost or made twice. :func:`finalize` trains the best
configuration on all the training classes with several seeds and evaluates the test split once per seed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dmltui import launching
from dmltui import runs as run_ops
from dmltui.executors import slurm
from dmltui.states import LIVE_STATES, is_final
from dmltui.tune import space as spaces
from dmltui.tune import study as studies
from dmltui.tune.study import StudyError, StudySpec
from engine.config.presets import ConfigError

# ------------------------------------------------------------------------------------- samplers and pruners


def _tpe(seed: int):
    from optuna.samplers import TPESampler

    # constant_liar: trials still running count as bad guesses, so parallel trials do not all sample one spot
    return TPESampler(seed=seed, constant_liar=True)


def _random(seed: int):
    from optuna.samplers import RandomSampler

    return RandomSampler(seed=seed)


def _qmc(seed: int):
    from optuna.samplers import QMCSampler

    return QMCSampler(seed=seed)


SAMPLERS: dict[str, Callable[[int], Any]] = {"tpe": _tpe, "random": _random, "qmc": _qmc}


def _median(spec: StudySpec):
    from optuna.pruners import MedianPruner

    return MedianPruner(n_startup_trials=spec.prune_startup, n_warmup_steps=spec.prune_warmup)


def _halving(spec: StudySpec):
    from optuna.pruners import SuccessiveHalvingPruner

    return SuccessiveHalvingPruner(min_resource=max(1, spec.prune_warmup), reduction_factor=3,
                                   bootstrap_count=0)


def _no_pruning(spec: StudySpec):
    from optuna.pruners import NopPruner

    return NopPruner()


PRUNERS: dict[str, Callable[[StudySpec], Any]] = {"median": _median, "halving": _halving, "none": _no_pruning}


# ------------------------------------------------------------------------------------------ the protocol


def fold_overrides(spec: StudySpec, fold: int) -> list[str]:
    """What the protocol sets on a fold run, after the study's own overrides (so nothing can undo it)."""
    return [f"data.folds={spec.folds}", f"data.fold={fold}", "data.use_tv_split=false", "eval.test=false",
            "eval.raw_pixel_baseline=false"]


def _resolve(spec: StudySpec, extra: list[str]):
    from dmltui import home
    from engine.config.presets import resolve

    return resolve(spec.presets, [*spec.overrides, *extra], library=home.preset_library())


def check_spec(spec: StudySpec) -> list[spaces.Param]:
    """Everything that can be checked before a run starts: the names, the presets and overrides with the protocol's
    settings, the metric, the sampler and pruner, and the space against the config schema. ConfigError/StudyError
    (one line) otherwise; returns the parsed space."""
    from engine.metric_names import check_metric_name

    studies.check_name(spec.name)
    if spec.sampler not in SAMPLERS:
        raise StudyError(f"--sampler {spec.sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if spec.pruner not in PRUNERS:
        raise StudyError(f"--pruner {spec.pruner!r}: expected one of {', '.join(PRUNERS)}")
    if spec.folds < 2:
        raise StudyError(f"--folds {spec.folds}: cross-validation needs at least 2 folds")
    if spec.trials < 1:
        raise StudyError(f"--trials {spec.trials}: at least 1")
    try:
        check_metric_name(spec.metric)
    except ValueError as error:
        raise StudyError(f"--metric {spec.metric}: {error}") from None
    if spec.metric.startswith("dists@"):
        raise StudyError(f"--metric {spec.metric}: a distance statistic, not a retrieval score to maximise")
    params = spaces.parse_space(spec.space)
    for override in spec.overrides:
        key = override.partition("=")[0].strip()
        if key in spaces.PROTOCOL_KEYS and key != "data.dataset":
            raise ConfigError(f"--set {key}: set by the tuning protocol")
    resolved = _resolve(spec, fold_overrides(spec, 0))
    spec.dataset = resolved.config.data.dataset
    if spec.metric not in resolved.config.eval.metrics:  # the study's metric is always evaluated
        spec.overrides = [*spec.overrides, f"eval.metrics={spaces.toml_literal([*resolved.config.eval.metrics, spec.metric])}"]
    spaces.check_space(params, lambda extra: _resolve(spec, [*fold_overrides(spec, 0), *extra]))
    return params


def open_study(spec: StudySpec, *, continuing: bool = False):
    """Create the study, or continue the stored one of that name when it searches the same thing. StudyError when a
    study of that name searches something else (it names what differs)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if studies.exists(spec.name):
        stored = studies.spec_of(studies.load(spec.name))
        if not continuing:
            differing = stored.differences(spec)
            if differing:
                raise StudyError(f"study {spec.name!r} exists and searches a different {', '.join(differing)}: give "
                                 f"another --name, or continue it with `dmltui tune resume {spec.name}`")
        # the trial budget may grow between sittings (0: keep it); what is searched may not change
        spec = StudySpec.from_dict({**stored.to_dict(), "trials": spec.trials or stored.trials})
        study = studies.load(spec.name)
        study.sampler = SAMPLERS[spec.sampler](spec.seed + len(study.trials))  # a fresh stream, not a replay
        study.pruner = PRUNERS[spec.pruner](spec)
        if spec.trials != stored.trials:
            study.set_user_attr(studies.SPEC_ATTR, spec.to_dict())
        return study, spec
    if continuing:
        studies.load(spec.name)  # raises: no such study
    study = optuna.create_study(study_name=spec.name, storage=studies.storage(spec.name), direction="maximize",
                                sampler=SAMPLERS[spec.sampler](spec.seed), pruner=PRUNERS[spec.pruner](spec))
    study.set_user_attr(studies.SPEC_ATTR, spec.to_dict())
    return study, spec


@dataclass
class Target:
    """Where fold runs execute: this machine (``gpus`` as ``gpus.resolve_request`` returned it) or SLURM; at most
    ``parallel`` runs at once."""

    gpus: str = "cpu"
    slurm: slurm.SlurmSettings | None = None
    parallel: int = 1


@dataclass
class ActiveTrial:
    trial: Any  # optuna.Trial
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)  # fold -> store record
    pending: list[int] = field(default_factory=list)  # folds not launched yet
    reported: set[int] = field(default_factory=set)  # epochs reported to Optuna

    @property
    def number(self) -> int:
        return self.trial.number


def _tag_value(tags: list[str], prefix: str) -> int | None:
    for tag in tags:
        if tag.startswith(prefix):
            try:
                return int(tag[len(prefix):])
            except ValueError:
                return None
    return None


def validation_curve(record: dict[str, Any], metric: str) -> dict[int, float]:
    """{epoch: validation value of *metric*} from the run dir's metrics.jsonl."""
    from engine.rundir import RunDir

    curve = {}
    for row in RunDir(record["run_dir"]).read_metrics():
        value = row.get("metrics", {}).get(metric) if row.get("kind") == "eval" and row.get("split") == "val" else None
        if isinstance(value, (int, float)) and row.get("epoch"):
            curve[int(row["epoch"])] = float(value)
    return curve


class Tuner:
    """Runs a study to its trial budget. *on_event(text)* hears what happens (the CLI prints it)."""

    def __init__(self, study, spec: StudySpec, target: Target, *, poll_seconds: float = 1.0,
                 on_event: Callable[[str], None] = lambda text: None):
        self.study, self.spec, self.target = study, spec, target
        self.poll_seconds = poll_seconds
        self.on_event = on_event
        self.params = spaces.parse_space(spec.space)
        self.distributions = {p.key: p.distribution() for p in self.params}
        self.active: list[ActiveTrial] = []
        self.curves: dict[str, tuple[int, dict[int, float]]] = {}  # run id -> (epoch read at, curve)
        self.busy_seconds = 0.0  # the tuner's own work (not the waiting): bench/tune.py reports it per trial
        self.trial_count = len(study.trials)
        self.changed = False  # the journal was written since the summary was cached

    # ---------------------------------------------------------------- attaching after a restart
    def attach(self) -> None:
        """Pick up the trials a previous tuner left running, with the runs the store has for them."""
        import optuna

        tag = f"study:{self.spec.name}"
        found: dict[int, dict[int, dict[str, Any]]] = {}
        for record in run_ops.open_store().all():
            tags = record.get("tags", [])
            if tag in tags and studies.TUNING_TAG in tags:
                number, fold = _tag_value(tags, "trial:"), _tag_value(tags, "fold:")
                if number is not None and fold is not None:
                    found.setdefault(number, {})[fold] = record
        for frozen in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            # Optuna's own optimize loop rebuilds a Trial from its id the same way
            trial = optuna.trial.Trial(self.study, frozen._trial_id)
            runs = found.get(frozen.number, {})
            pending = [fold for fold in range(self.spec.folds) if fold not in runs]
            self.active.append(ActiveTrial(trial, runs, pending, set(frozen.intermediate_values)))
            self.on_event(f"trial {frozen.number}: continuing ({len(runs)} of {self.spec.folds} fold runs started)")

    # ---------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        self.attach()
        while True:
            started = time.perf_counter()
            self.update()
            self.launch()
            if self.changed:  # keep `tune status` reading its cache, not replaying the journal
                studies.refresh_summary(self.study)
                self.changed = False
            self.busy_seconds += time.perf_counter() - started
            if not self.active and self.trial_count >= self.spec.trials:
                break
            time.sleep(self.poll_seconds)
        return studies.refresh_summary(self.study)

    def live_runs(self) -> int:
        return sum(record.get("state") in LIVE_STATES for t in self.active for record in t.runs.values())

    def launch(self) -> None:
        free = self.target.parallel - self.live_runs()
        for trial in self.active:
            if free <= 0:
                return
            free -= self._launch_folds(trial, free)
        # a new trial waits for slots for all its folds (as many as --parallel allows): its folds start together, one
        # job array on SLURM, rather than one fold per slot as slots free up
        whole = min(self.spec.folds, self.target.parallel)
        while free >= whole and self.trial_count < self.spec.trials:
            trial = ActiveTrial(self.study.ask(self.distributions), pending=list(range(self.spec.folds)))
            self.trial_count += 1
            self.active.append(trial)
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.trial.params.items())
            self.on_event(f"trial {trial.number}: {shown}")
            free -= self._launch_folds(trial, free)

    def _launch_folds(self, trial: ActiveTrial, free: int) -> int:
        """Start up to *free* of the trial's pending folds (one job array on SLURM); returns how many started."""
        folds = trial.pending[:free]
        if not folds:
            return 0
        tags = [f"study:{self.spec.name}", f"trial:{trial.number}", studies.TUNING_TAG]
        try:
            planned = []
            for fold in folds:
                extra = [*spaces.overrides_for(trial.trial.params), *fold_overrides(self.spec, fold)]
                runs, _ = launching.plan_runs(self.spec.presets, [*self.spec.overrides, *extra], seeds=str(self.spec.seed),
                                              name=f"{self.spec.name}-t{trial.number}-f{fold}", tags=[*tags, f"fold:{fold}"])
                planned += runs
        except (ConfigError, ValueError) as error:  # this combination of values is not a valid config
            reason = error.lines[0] if isinstance(error, ConfigError) else str(error)
            self._end(trial, failed=reason)
            return 0
        # one call: on SLURM the folds go to the cluster as one job array
        records = launching.start_runs(planned, gpus=self.target.gpus, slurm_settings=self.target.slurm)
        trial.runs.update(zip(folds, records, strict=True))
        trial.pending = [f for f in trial.pending if f not in folds]
        trial.trial.set_user_attr("runs", [trial.runs[f]["id"] for f in sorted(trial.runs)])
        self.changed = True
        return len(folds)

    def update(self) -> None:
        ids = [record["id"] for t in self.active for record in t.runs.values()]
        current = {record["id"]: record for record in run_ops.reconcile_many(ids)} if ids else {}
        for trial in list(self.active):
            for fold, record in list(trial.runs.items()):
                trial.runs[fold] = current.get(record["id"], {**record, "state": "crashed", "error": "removed from the store"})
            self._follow(trial)

    def _curve(self, record: dict[str, Any]) -> dict[int, float]:
        epoch = record.get("epoch") or 0
        cached = self.curves.get(record["id"])
        if cached is None or cached[0] != epoch or is_final(record):
            cached = (epoch, validation_curve(record, self.spec.metric))
            self.curves[record["id"]] = cached
        return cached[1]

    def _follow(self, trial: ActiveTrial) -> None:
        if trial.pending and not trial.runs:
            return
        states = [record.get("state") for record in trial.runs.values()]
        broken = [r for r in trial.runs.values() if is_final(r) and r.get("state") != "finished"]
        if broken:
            record = broken[0]
            self._end(trial, failed=f"fold run {record['id']} {record['state']}"
                                    + (f": {record['error']}" if record.get("error") else ""))
            return
        if not trial.pending:
            curves = [self._curve(record) for record in trial.runs.values()]
            common = set.intersection(*(set(curve) for curve in curves))
            for epoch in sorted(common - trial.reported):
                trial.trial.report(statistics.fmean(curve[epoch] for curve in curves), epoch)
                trial.reported.add(epoch)
                self.changed = True
                if not all(state == "finished" for state in states) and trial.trial.should_prune():
                    self._prune(trial, epoch)
                    return
            if all(state == "finished" for state in states):
                bests = [max(curve.values()) for curve in curves if curve]
                if len(bests) < len(curves):
                    self._end(trial, failed=f"a fold run logged no validation {self.spec.metric}")
                else:
                    self._end(trial, value=statistics.fmean(bests))

    def _prune(self, trial: ActiveTrial, epoch: int) -> None:
        live = [record for record in trial.runs.values() if record.get("state") in LIVE_STATES]
        with ThreadPoolExecutor(max_workers=max(1, len(live))) as pool:
            list(pool.map(_stop_quietly, live))
        for record in trial.runs.values():
            run_ops.annotate(record, add_tags=["pruned"])
        self._end(trial, pruned_at=epoch)

    def _end(self, trial: ActiveTrial, *, value: float | None = None, failed: str | None = None,
             pruned_at: int | None = None) -> None:
        from optuna.trial import TrialState

        if failed is not None:
            trial.trial.set_user_attr("reason", failed)
            for record in trial.runs.values():  # the other folds cannot make the trial whole again
                if record.get("state") in LIVE_STATES:
                    _stop_quietly(record)
            self.study.tell(trial.trial, state=TrialState.FAIL)
            self.on_event(f"trial {trial.number}: failed ({failed})")
        elif pruned_at is not None:
            self.study.tell(trial.trial, state=TrialState.PRUNED)
            self.on_event(f"trial {trial.number}: pruned after epoch {pruned_at}")
        else:
            self.study.tell(trial.trial, value)
            best = self.study.best_trial
            self.on_event(f"trial {trial.number}: {self.spec.metric} {value:.4f} (best: trial {best.number}, {best.value:.4f})")
        self.active.remove(trial)
        self.changed = True


def _stop_quietly(record: dict[str, Any]) -> None:
    try:
        run_ops.stop(record)
    except run_ops.RunError:  # it ended on its own in the meantime
        pass


def tune(spec: StudySpec, target: Target, *, continuing: bool = False, poll_seconds: float = 1.0,
         on_event: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """Check, create or continue, and run a study to its budget under the study's lock; returns its summary.
    StudyError when another tuner holds the study."""
    from filelock import FileLock, Timeout

    if not continuing:
        check_spec(spec)
    studies.study_dir(spec.name).mkdir(parents=True, exist_ok=True)
    lock = FileLock(studies.study_dir(spec.name) / "tuner.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise studies.StudyBusy(f"study {spec.name!r} is being tuned by another process; `dmltui tune status {spec.name}` "
                         "shows its progress") from None
    try:
        study, spec = open_study(spec, continuing=continuing)
        return Tuner(study, spec, target, poll_seconds=poll_seconds, on_event=on_event).run()
    finally:
        lock.release()


# ------------------------------------------------------------------------------------------- finalize


def searched_epochs(trial, metric: str) -> tuple[int | None, str]:
    """The epoch count the search selected for *trial*: the mean over its fold runs of the epoch of each one's best
    validation *metric* (the earliest on ties), rounded half up, with the rule in words; (None, why not) when a fold
    run or its validation curve is gone."""
    run_ids = trial.user_attrs.get("runs", [])
    if not run_ids:
        return None, f"trial {trial.number} records no fold runs"
    store = run_ops.open_store()
    best_epochs = []
    for run_id in run_ids:
        record = store.get(run_id)
        if record is None:
            return None, f"fold run {run_id} of trial {trial.number} is no longer in the store"
        curve = validation_curve(record, metric)
        if not curve:
            return None, f"fold run {run_id} of trial {trial.number} has no validation {metric} in its metrics.jsonl"
        best_epochs.append(max(sorted(curve), key=curve.__getitem__))
    mean = statistics.fmean(best_epochs)
    return max(1, math.floor(mean + 0.5)), (f"the mean over trial {trial.number}'s {len(best_epochs)} folds of the "
                                            f"epoch of their best validation {metric} "
                                            f"({', '.join(map(str, best_epochs))}: mean {mean:g})")


def finalize(name: str, seeds: str, target: Target, *,
             epochs: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train the best trial's configuration on all the training classes, one run per seed, evaluating the test split
    once (after the last epoch); the study records the runs. Their test results are the study's result.

    They train for the epoch count the search selected (:func:`searched_epochs`), *epochs* when given, else (a fold
    run is gone) the config's. Returns the runs' records and ``{"epochs", "rule"}``."""
    study = studies.load(name)
    spec = studies.spec_of(study)
    if study.user_attrs.get(studies.FINAL_ATTR):
        raise StudyError(f"study {name!r} is finalized already (runs {', '.join(study.user_attrs[studies.FINAL_ATTR])})")
    try:
        best = study.best_trial
    except ValueError:
        raise StudyError(f"study {name!r} has no completed trial yet: nothing to finalize") from None
    if epochs is not None:
        rule = "given with --epochs"
    else:
        epochs, rule = searched_epochs(best, spec.metric)
        if epochs is None:
            epochs, rule = _resolve(spec, spaces.overrides_for(best.params)).config.optim.epochs, \
                f"the config's optim.epochs, as {rule}"
    chosen = {"epochs": epochs, "rule": rule}
    overrides = [*spec.overrides, *spaces.overrides_for(best.params), "data.folds=0", "data.use_tv_split=false",
                 "eval.test=true", f"optim.epochs={epochs}", f"eval.every={epochs}", "eval.at_start=false"]
    tags = [f"study:{name}", f"tuned:{len(study.trials)}"]
    planned, _ = launching.plan_runs(spec.presets, overrides, seeds=seeds, name=f"{spec.presets[0]}-tuned-{name}", tags=tags)
    records = launching.start_runs(planned, gpus=target.gpus, slurm_settings=target.slurm)
    study.set_user_attr(studies.FINAL_ATTR, [r["id"] for r in records])
    study.set_user_attr(studies.FINAL_EPOCHS_ATTR, chosen)
    study.set_user_attr("final_trial", best.number)
    studies.refresh_summary(study)
    return records, chosen
