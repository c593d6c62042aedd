"""``dmltui tune``: Optuna studies with class-disjoint cross-validation (``tune PRESET... --space ...``), their
progress (``tune status``), continuing one (``tune resume``) and its final, test-evaluated runs (``tune finalize``)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from dmltui.cli.common import ExitCode, fail, print_json, stdout
from dmltui.cli.launch import OnOption, SlurmOption, _slurm_settings


class _StartByDefault(TyperGroup):
    """``dmltui tune margin-b12-d cub200 ...`` means ``dmltui tune start margin-b12-d cub200 ...``."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_StartByDefault, no_args_is_help=True,
                  help="Hyperparameter search with Optuna: class-disjoint k-fold cross-validation, the test split never "
                       "seen, pruning. `dmltui tune PRESET... --space KEY=FORM(...)` starts or continues a study.")


def _target(on: str, slurm: list[str] | None, gpus: str | None, parallel: int):
    from dmltui.cli.common import checked_gpus
    from dmltui.tune.tuner import Target

    settings = _slurm_settings(on, slurm)
    return Target(gpus=checked_gpus(gpus) if settings is None else "cpu", slurm=settings, parallel=parallel)


def _run(spec, target, *, continuing: bool, poll: float, as_json: bool) -> None:
    from dmltui.executors.slurm import SlurmError
    from dmltui.tune.study import StudyBusy, StudyError
    from dmltui.tune.tuner import tune
    from engine.config.presets import ConfigError

    def say(text: str) -> None:
        print(text, file=sys.stderr if as_json else sys.stdout, flush=True)

    try:
        summary = tune(spec, target, continuing=continuing, poll_seconds=poll, on_event=say)
    except StudyBusy as error:
        fail(str(error), ExitCode.BUSY)
    except ConfigError as error:
        fail(error.lines, ExitCode.USAGE)
    except StudyError as error:
        fail(str(error), ExitCode.NOT_FOUND if continuing and "no study" in str(error) else ExitCode.USAGE)
    except SlurmError as error:
        fail(str(error), ExitCode.FAILED)
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary, final=None)


@app.command("start")
def start(
    presets: Annotated[list[str], typer.Argument(help="preset names or files, composed in order (e.g. margin-b12-d cub200)")],
    space: Annotated[list[str], typer.Option("--space", help="KEY=loguniform(a,b) | uniform(a,b) | int(a,b) | logint(a,b) | "
                                                              "choice(v1,v2,...); repeatable")],
    trials: Annotated[int, typer.Option("--trials", min=1, help="trials in the study (all states count)")] = 20,
    folds: Annotated[int, typer.Option("--folds", help="class-disjoint folds of the training classes (>= 2)")] = 4,
    metric: Annotated[str, typer.Option("--metric", help="the validation metric to maximise")] = "map_at_r",
    parallel: Annotated[int, typer.Option("--parallel", min=1, help="fold runs training at once")] = 1,
    sampler: Annotated[str, typer.Option("--sampler", help="tpe, random or qmc")] = "tpe",
    pruner: Annotated[str, typer.Option("--pruner", help="median, halving (successive halving) or none")] = "median",
    prune_after: Annotated[int, typer.Option("--prune-after", min=0, help="finished trials before pruning starts")] = 5,
    prune_warmup: Annotated[int, typer.Option("--prune-warmup", min=0, help="epochs of a trial never pruned")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="the sampler's seed and the fold runs' run.seed")] = 0,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE for every run of the study")] = None,
    name: Annotated[str | None, typer.Option("--name", help="study name (default: the presets joined by '-')")] = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help="as for dmltui run")] = None,
    on: OnOption = "local",
    slurm: SlurmOption = None,
    poll: Annotated[float, typer.Option("--poll", min=0.05, help="seconds between looks at the runs")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the final summary as JSON (progress on stderr)")] = False,
) -> None:
    """Start a study, or continue the one of that name that searches the same space, until it has --trials trials."""
    from dmltui.tune.study import StudySpec

    spec = StudySpec(name=name or "-".join(p.replace("/", "_") for p in presets)[:64], presets=list(presets), dataset="",
                     space=list(space), trials=trials, folds=folds, metric=metric, sampler=sampler, pruner=pruner,
                     prune_startup=prune_after, prune_warmup=prune_warmup, seed=seed, overrides=list(overrides or []))
    _run(spec, _target(on, slurm, gpus, parallel), continuing=False, poll=poll, as_json=as_json)


@app.command("resume")
def resume(
    name: Annotated[str, typer.Argument(help="the study")],
    trials: Annotated[int, typer.Option("--trials", min=0, help="a new trial budget (0: keep the study's)")] = 0,
    parallel: Annotated[int, typer.Option("--parallel", min=1, help="fold runs training at once")] = 1,
    gpus: Annotated[str | None, typer.Option("--gpus", help="as for dmltui run")] = None,
    on: OnOption = "local",
    slurm: SlurmOption = None,
    poll: Annotated[float, typer.Option("--poll", min=0.05, help="seconds between looks at the runs")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the final summary as JSON")] = False,
) -> None:
    """Continue a stopped or killed study: its running trials' runs are picked up, none is started twice."""
    from dmltui.tune.study import StudySpec

    spec = StudySpec(name=name, presets=[], dataset="", space=[], trials=trials)
    _run(spec, _target(on, slurm, gpus, parallel), continuing=True, poll=poll, as_json=as_json)


def _final(summary: dict[str, Any]) -> dict[str, Any] | None:
    from dmltui import runs as run_ops
    from dmltui.tune.study import final_results

    if not summary["final_runs"]:
        return None
    store = run_ops.open_store()
    records = [r for r in (store.get(i) for i in summary["final_runs"]) if r is not None]
    return final_results(summary, records)


@app.command("status")
def status(
    name: Annotated[str | None, typer.Argument(help="the study (default: list the studies)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """A study's trials, the best so far, and its finalized result; without a name, the studies."""
    from dmltui.tune import study as studies

    if name is None:
        rows = []
        for known in studies.list_studies():
            summary = studies.read_summary(known)
            rows.append({"name": known, **summary["counts"], "best": summary["best"]["value"] if summary["best"] else None,
                         "metric": summary["spec"]["metric"], "presets": summary["spec"]["presets"]})
        if as_json:
            print_json(rows)
        elif not rows:
            stdout.print("no studies yet: dmltui tune PRESET... --space KEY=FORM(...) starts one", highlight=False)
        for row in rows if not as_json else []:
            best = f"{row['best']:.4f}" if row["best"] is not None else "-"
            stdout.print(f"{row['name']}  {row['total']}/{row['requested']} trials  best {row['metric']} {best}", highlight=False)
        return
    try:
        summary = studies.read_summary(name)
    except studies.StudyError as error:
        fail(str(error), ExitCode.NOT_FOUND)
    final = _final(summary)
    if as_json:
        print_json({**summary, "final": final})
    else:
        _print_summary(summary, final)


def _print_summary(summary: dict[str, Any], final: dict[str, Any] | None) -> None:
    from rich.table import Table

    spec, counts = summary["spec"], summary["counts"]
    stdout.print(f"study {summary['name']}: {' '.join(spec['presets'])} on {spec['dataset']}, {spec['folds']}-fold "
                 f"class-disjoint validation, maximising {spec['metric']} ({spec['sampler']}, pruner {spec['pruner']})",
                 highlight=False)
    stdout.print(f"trials {counts['total']}/{counts['requested']}: {counts['complete']} complete, {counts['pruned']} pruned, "
                 f"{counts['running']} running, {counts['fail']} failed", highlight=False)
    best = summary["best"]
    if best:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        stdout.print(f"best: trial {best['number']}, {spec['metric']} {best['value']:.4f} ({params})", highlight=False)
    if final:
        from dmltui.tune.study import final_text

        stdout.print(final_text(final), highlight=False)
    table = Table("trial", "state", "value", *[p.partition("=")[0] for p in spec["space"]], box=None, pad_edge=False)
    for row in summary["trials"]:
        value = f"{row['value']:.4f}" if row["value"] is not None else "-"
        params = [row["params"].get(p.partition("=")[0]) for p in spec["space"]]
        table.add_row(str(row["number"]), row["state"], value,
                      *[f"{v:.4g}" if isinstance(v, float) else str(v) if v is not None else "-" for v in params])
    stdout.print(table)


@app.command("finalize")
def finalize(
    name: Annotated[str, typer.Argument(help="the study")],
    seeds: Annotated[str, typer.Option("--seeds", help="seeds like 0-4 or 0,3,7")] = "0-4",
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="epochs of the final runs (default: the mean "
                                               "over the best trial's folds of the epoch of their best validation value)")] = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help="as for dmltui run")] = None,
    on: OnOption = "local",
    slurm: SlurmOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the started runs as JSON")] = False,
) -> None:
    """Train the best trial's config on all the training classes once per seed, for the mean over the best trial's
    folds of the epoch of their best validation value (or --epochs); the test split is evaluated once per run, after
    its last epoch. `tune status` and `dmltui report` show the result as mean ± std."""
    from dmltui.executors.slurm import SlurmError
    from dmltui.tune.study import StudyError
    from dmltui.tune.tuner import finalize as finalize_study
    from engine.config.presets import ConfigError

    target = _target(on, slurm, gpus, 1)
    try:
        records, chosen = finalize_study(name, seeds, target, epochs=epochs)
    except ConfigError as error:
        fail(error.lines, ExitCode.USAGE)
    except StudyError as error:
        fail(str(error), ExitCode.NOT_FOUND if "no study" in str(error) else ExitCode.USAGE)
    except ValueError as error:  # the seeds
        fail(f"--seeds {error}", ExitCode.USAGE)
    except SlurmError as error:
        fail(str(error), ExitCode.FAILED)
    print(f"{chosen['epochs']} epochs: {chosen['rule']}", file=sys.stderr if as_json else sys.stdout)
    if as_json:
        print_json(records)
    else:
        for record in records:
            stdout.print(f"{record['id']}  {record['name']}  {record['state']}", highlight=False)
