"""``dmltui data``: fetch, check and list the paper's datasets (CUB200, CARS196, SOP, In-Shop).

Where each dataset comes from, and every step (download, verification, extraction, conversion, checks), lives in
engine.data.sources; this module makes commands of them: progress bars on stderr (drawn only on a terminal), the
results on stdout, and exit codes: 1 for a failure or a problem found, 2 for a request or a config file that cannot
work, 3 for an unknown dataset name.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from dmltui import home
from dmltui.cli.common import ExitCode, fail, print_json, stderr, stdout
from engine.data import data_root, sources
from engine.registry import UnknownNameError

app = typer.Typer(help="The paper's datasets: fetch (download, verify, convert), check, list.", no_args_is_help=True)

NAMES = ", ".join(sources.SOURCES.names())
RootOption = Annotated[
    Path | None, typer.Option("--root", help="the data root (default: $DMLTUI_DATA, else the user data dir)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds *path*, or will (its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _source(name: str) -> sources.Source:
    try:
        return sources.SOURCES.get(name)
    except UnknownNameError as error:
        fail(str(error), ExitCode.NOT_FOUND)


def _overrides() -> sources.Overrides:
    try:
        return sources.overrides_from_config(home.user_config(), str(home.config_path()))
    except (home.SettingError, sources.SourceConfigError) as error:
        fail(str(error), ExitCode.USAGE)


class _Progress:
    """One rich bar per stage (download, sha256, extract, decode) on stderr, only on a terminal; the messages print
    above the bars, whole (a URL is never wrapped)."""

    def __init__(self, unit: str):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        amount = [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn()]
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), *amount, TimeRemainingColumn(),
                             console=stderr, disable=not stderr.is_terminal)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> _Progress:
        self.bars.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.bars.stop()

    def update(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bars.add_task(stage, total=total)
        self.bars.update(self.tasks[stage], completed=done, total=total)

    def say(self, message: str) -> None:
        stderr.print(message, highlight=False, markup=False, soft_wrap=True)

    def hooks(self) -> sources.Hooks:
        return sources.Hooks(progress=self.update, say=self.say)


@app.command("fetch")
def fetch(
    name: Annotated[str, typer.Argument(help=f"the dataset: {NAMES}")],
    root: RootOption = None,
    files: Annotated[list[str] | None, typer.Option(
        "--from", metavar="FILE_OR_URL",
        help="take the dataset from this archive or file (a local path or an http(s) URL) instead of the published "
             "download; repeatable (In-Shop: img.zip and list_eval_partition.txt). The published checksum verifies "
             "the published archive; anything else is verified by its file list and counts")] = None,
    url: Annotated[str | None, typer.Option(
        "--url", help="download the published archive from this mirror; its published checksum, if any, applies")] = None,
    as_json: JsonOption = False,
) -> None:
    """Download a dataset's archive, verify it, and convert it into the layout the loaders read: the free space is
    checked first, an interrupted download resumes, and <root>/<name> appears only once complete. Mirrors and the counts
    of a private subset go in the user config file ($DMLTUI_CONFIG, else ~/.config/dmltui/config.toml):
    \\[data.mirrors] NAME = \\["https://..."] and \\[data.expected.NAME] images = N, classes = M."""
    source = _source(name)
    overrides = _overrides()
    mirrors = overrides.mirrors.get(source.name, ())
    try:
        inputs = sources.plan_inputs(source, files=files or (), url=url, mirrors=mirrors)
    except sources.SourceUsageError as error:
        hint = "" if files or url or mirrors or source.urls else (
            f"; then give them with --from FILE (repeatable), or name a mirror with --url URL or [data.mirrors] "
            f"{source.name} in {home.config_path()}")
        fail(f"{error}{hint}", ExitCode.USAGE)
    base = data_root(root)
    try:  # the bars stop before an error prints, so that it is the last line
        with _Progress("bytes") as progress:
            record = sources.fetch(source, base, inputs, expected=overrides.expected_for(source), free_space=free_bytes,
                                   hooks=progress.hooks())
    except sources.DownloadFailed as error:
        fail(f"{error}; on a machine without access, download it elsewhere and give it with --from FILE, or name a "
             "mirror with --url URL")
    except sources.FetchError as error:
        fail(str(error))
    if as_json:
        print_json({"path": str(base / source.name), **record})
        return
    print(f"{source.name}: {record['images']:,} images in {record['classes']:,} classes in {base / source.name}")
    how = (f"the published {record['verified_by']}, the file list and the counts" if record["checksum"]
           else "the file list and the counts (no published checksum)")
    hashes = ", ".join(f["sha256"] for f in record["files"])
    print(f"verified by {how}; sha256 {hashes} recorded in {sources.SOURCE_RECORD}")


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@app.command("check")
def check(
    name: Annotated[str | None, typer.Argument(help=f"the dataset ({NAMES}); default: each one under the root")] = None,
    root: RootOption = None,
    as_json: JsonOption = False,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="processes that decode the images "
                                                "(default: one per CPU)")] = None,
) -> None:
    """Verify datasets: the layout, the image and class counts (the published ones, or \\[data.expected.NAME] of the
    user config file), and that every image decodes. One line per problem, naming the file; exit code 1 if any."""
    overrides = _overrides()
    base = data_root(root)
    if name is not None:
        chosen = [_source(name)]
    else:
        chosen = [source for _, source in sources.SOURCES.items() if (base / source.name).is_dir()]
        if not chosen:
            fail(f"no dataset under {base}; fetch one with `dmltui data fetch NAME` ({NAMES})")
    with _Progress("images") as progress:
        reports = [sources.check(source, base, expected=overrides.expected_for(source),
                                 workers=workers or _default_workers(), hooks=progress.hooks()) for source in chosen]
    if as_json:
        print_json(reports)
    else:
        for report in reports:
            for problem in report["problems"]:
                print(f"{problem['path']}: {problem['problem']}")
            if report["ok"]:
                print(f"{report['name']}: ok, {report['images']:,} images in {report['classes']:,} classes, every image "
                      f"decodes ({report['path']})")
            else:
                print(f"{report['name']}: {len(report['problems'])} problem(s) ({report['path']})")
    raise typer.Exit(int(ExitCode.OK if all(report["ok"] for report in reports) else ExitCode.FAILED))


@app.command("list")
def list_datasets(root: RootOption = None, as_json: JsonOption = False) -> None:
    """The datasets under the data root: images, classes, size, where they came from, and the resized-image cache."""
    base = data_root(root)
    entries = [sources.describe(source, base) for _, source in sources.SOURCES.items()]
    if as_json:
        print_json(entries)
        return
    from rich.table import Table

    table = Table("dataset", "present", "images", "classes", "size", "verified", "cache", box=None, pad_edge=False)
    for entry in entries:
        if not entry["present"]:
            table.add_row(entry["name"], "no", "-", "-", "-", "-", "-")
            continue
        fetched = f"{entry['verified_by']} {entry['fetched_at'][:10]}" if entry["verified"] else "no source record"
        table.add_row(
            entry["name"], "[red]broken[/]" if entry["problem"] else "yes",
            f"{entry['images']:,}" if entry["images"] is not None else "-",
            f"{entry['classes']:,}" if entry["classes"] is not None else "-",
            sources.human_bytes(entry["bytes"]), fetched,
            sources.human_bytes(entry["cache_bytes"]) if entry["cache"] else "-",
        )
    stdout.print(f"data root: {base}", highlight=False)
    stdout.print(table)
    for entry in entries:
        if entry["problem"]:
            print(f"{entry['name']}: {entry['problem']}")
