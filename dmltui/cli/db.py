"""``dmltui db`` and ``dmltui import``: the store's maintenance and runs started elsewhere."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from dmltui import home
from dmltui import runs as run_ops
from dmltui.cli.common import ExitCode, fail, print_json, stdout
from dmltui.executors import slurm
from dmltui.store import RunStore, StoreError

app = typer.Typer(help="The run store.", no_args_is_help=True)


def run_dirs_under(folder: Path) -> list[Path]:
    """Run directories below *folder*, leaving out hidden folders: a deleted run's files in the trash and a run
    directory still being made (``.ID-…``) are not runs."""
    return sorted(p.parent for p in folder.glob("**/config.toml") if (p.parent / "status.json").exists()
                  and not any(part.startswith(".") for part in p.parent.relative_to(folder).parts))


@app.command("rebuild")
def rebuild(
    scan: Annotated[list[Path] | None, typer.Option("--scan", help="also scan this folder for run dirs; repeatable")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Re-create the store from the run directories. A corrupt or old store file is moved aside, never deleted."""
    path = home.store_path()
    folders = [home.runs_dir(), *(scan or [])]
    rebuilt, skipped = [], []
    jobs = slurm.queue()  # asked before the lock, for the runs on SLURM among the directories

    def collect() -> list[dict]:  # called under the store's lock: no tag or note added meanwhile is lost
        records = {}
        for folder in folders:
            for run_dir in run_dirs_under(folder):
                try:
                    record = run_ops.record_from_run_dir(run_dir, jobs)
                except Exception as error:  # one unreadable run dir must not stop the rebuild
                    skipped.append({"run_dir": str(run_dir), "error": f"{type(error).__name__}: {error}"})
                    continue
                records.setdefault(record["id"], record)  # a run dir found under two scanned folders counts once
        rebuilt.extend(records)
        return list(records.values())

    aside = RunStore(path).rebuild(collect, path.with_name(f"{path.name}.{datetime.now():%Y%m%d-%H%M%S}.bak"))
    if as_json:
        print_json({"store": str(path), "previous": str(aside) if aside else None, "runs": rebuilt, "skipped": skipped})
        return
    if aside:
        print(f"previous store kept as {aside}", file=sys.stderr)
    for entry in skipped:
        print(f"warning: skipped {entry['run_dir']}: {entry['error']}", file=sys.stderr)
    stdout.print(f"rebuilt {path} with {len(rebuilt)} run(s)", highlight=False)


def import_runs(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories (with config.toml and status.json)")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Record runs started outside the manager (plain `python -m engine`, torchrun)."""
    for run_dir in run_dirs:
        if not (run_dir / "config.toml").is_file():
            fail(f"{run_dir} is not a run directory (no config.toml)", ExitCode.NOT_FOUND)
    imported = []
    with run_ops.open_store().transaction() as tx:  # what is known and what is added: one view, one write
        known = {r["run_dir"] for r in tx.all()}
        for run_dir in run_dirs:
            if str(run_dir.resolve()) in known:
                print(f"{run_dir} is already recorded", file=sys.stderr)
                continue
            try:
                record = run_ops.record_from_run_dir(run_dir)
            except (ValueError, OSError) as error:
                fail(f"{run_dir}: {error}", ExitCode.USAGE)
            tx.insert(record)
            known.add(record["run_dir"])
            imported.append(record)
    if as_json:
        print_json(imported)
    for record in imported if not as_json else []:
        stdout.print(f"{record['id']}  {record['name']}  {record['state']}", highlight=False)


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    bench: Annotated[bool, typer.Option("--bench", help="also measure this machine: GPUs, train step, image "
                                        "pipeline, evaluation and DDP (about 2 minutes; exit 1 when a figure falls "
                                        "short or a part fails)")] = False,
) -> None:
    """Python, torch, CUDA, GPUs, faiss, wandb, data and store locations and health, in one table; with --bench, a
    self-test of this machine through the real code paths."""
    import importlib.metadata
    import platform

    import torch

    from dmltui import gpus
    from engine.data import data_root

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    checks: list[dict] = []

    def add(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})

    add("python", sys.version_info >= (3, 11), f"{platform.python_version()} ({sys.executable})")
    add("torch", True, f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})")
    add("cuda", True, "available" if torch.cuda.is_available() else "not available: training and metrics run on the CPU")
    infos = gpus.gpus()
    add("gpus", True, "; ".join(f"{g.index}: {g.name} {g.memory_total_mb or '?'} MiB" for g in infos) or "none")
    faiss = version("faiss-cpu") or version("faiss-gpu") or version("faiss-gpu-cu12")
    add("faiss", True, faiss or "not installed (metrics use torch)")
    add("wandb", True, version("wandb") or "not installed (log.online needs it)")
    add("data", True, str(data_root()))
    store_path = home.store_path()
    try:
        count = len(RunStore(store_path, timeout=2).all()) if store_path.exists() else 0
        add("store", True, f"{store_path} ({count} runs)" if store_path.exists() else f"{store_path} (not created yet)")
    except StoreError as error:
        add("store", False, str(error))
    healthy = all(check["ok"] for check in checks)
    if bench:
        healthy = _bench(checks, as_json) and healthy
    elif as_json:
        print_json(checks)
    else:
        from rich.table import Table

        table = Table("check", "", "detail", box=None, pad_edge=False)
        for check in checks:
            table.add_row(check["check"], "[green]ok[/]" if check["ok"] else "[red]problem[/]", check["detail"])
        stdout.print(table)
    if not healthy:
        raise typer.Exit(int(ExitCode.FAILED))


def _bench(checks: list[dict], as_json: bool) -> bool:
    """`doctor --bench`: the checks and the self-test's figures in one table (or one JSON object); True when nothing
    fell short or failed. Progress goes to stderr, so that --json's stdout is the object alone."""
    from rich.table import Table

    from dmltui.doctor_bench import run_bench, table_rows

    report = run_bench(say=lambda line: print(line, file=sys.stderr, flush=True)).as_dict()
    if as_json:
        print_json({"checks": checks, **report})
    else:
        marks = {"ok": "[green]ok[/]", "SHORT": "[red]short[/]", "skipped": "[yellow]skipped[/]", "FAILED": "[red]failed[/]"}
        table = Table("part", "figure", "", "value", box=None, pad_edge=False)
        for check in checks:
            table.add_row("doctor", check["check"], "[green]ok[/]" if check["ok"] else "[red]problem[/]", check["detail"])
        for part, figure, value, mark in table_rows(report):
            table.add_row(part, figure, marks[mark], value)
        stdout.print(table)
        stdout.print(f"{report['seconds']} s; {len(report['short'])} short, {len(report['skipped'])} skipped, "
                     f"{len(report['failed'])} failed", highlight=False)
    return not report["short"] and not report["failed"]
