"""``dmltui presets``: list, show, validate and import presets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dmltui import home
from dmltui.cli.common import ExitCode, fail, print_json, stdout

# engine.config.presets (pydantic) and rich.table are imported by the commands that use them: `dmltui --help`,
# completion and the other commands do not pay for them.

app = typer.Typer(help="Run presets: composable TOML files.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]


def _describe(name: str) -> dict[str, Any]:
    library = home.preset_library()
    path = library.find(name)
    raw = library.read(path)
    extends = raw.get("extends", [])
    return {
        "name": path.stem,
        "path": str(path),
        "description": raw.get("description", ""),
        "extends": [extends] if isinstance(extends, str) else extends,
        "seeds": raw.get("seeds"),
        "raw": raw,
    }


@app.command("list")
def list_presets(as_json: JsonOption = False) -> None:
    """List the available presets (user presets shadow bundled ones)."""
    from rich.table import Table

    from engine.config.presets import ConfigError

    entries = []
    for name in home.preset_library().names():
        try:
            entry = _describe(name)
        except ConfigError as error:  # an unreadable file still shows up, with its error
            entry = {"name": name, "path": None, "description": f"(unreadable: {error})", "extends": [], "seeds": None}
        entry.pop("raw", None)
        entries.append(entry)
    if as_json:
        print_json(entries)
        return
    table = Table("preset", "extends", "description", box=None, pad_edge=False)
    for entry in entries:
        table.add_row(entry["name"], ", ".join(entry["extends"]), entry["description"])
    stdout.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="preset name or path to a .toml file")],
    resolved: Annotated[bool, typer.Option("--resolved", help="show the fully resolved config")] = False,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE override (with --resolved)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show a preset file, or with --resolved the complete config it produces."""
    from engine.config.presets import ConfigError, PresetNotFound, resolve

    try:
        entry = _describe(name)
        result = resolve(name, overrides or [], library=home.preset_library()) if resolved or overrides else None
    except PresetNotFound as error:
        fail(error.lines, ExitCode.NOT_FOUND)
    except ConfigError as error:
        fail(error.lines, ExitCode.USAGE)
    if as_json:
        payload = {k: entry[k] for k in ("name", "path", "description", "extends", "seeds")}
        payload["config"] = result.config.to_dict() if result else entry["raw"]
        if result:
            payload["chain"] = result.chain
            payload["sources"] = result.sources
        print_json(payload)
        return
    if result:
        print(f"# {entry['name']}: {entry['description']}")
        print(f"# resolved from: {' -> '.join(result.chain)}")
        print(result.to_toml(), end="")
    else:
        print(Path(entry["path"]).read_text(), end="")


@app.command("validate")
def validate(
    paths: Annotated[list[str] | None, typer.Argument(help="preset names or files; default: every available preset")] = None,
    as_json: JsonOption = False,
) -> None:
    """Resolve and validate presets; one line per problem, exit code 2 if any is invalid."""
    from engine.config.presets import ConfigError, resolve

    library = home.preset_library()
    targets = paths or library.names()
    report = []
    for target in targets:
        try:
            result = resolve(target, library=library)
            report.append({"preset": target, "ok": True, "errors": [], "warnings": result.warnings})
        except ConfigError as error:
            report.append({"preset": target, "ok": False, "errors": error.lines, "warnings": []})
    if as_json:
        print_json(report)
    else:
        for entry in report:
            if entry["ok"]:
                stdout.print(f"[green]ok[/]      {entry['preset']}")
            for line in entry["errors"]:
                print(f"error: {line}", file=sys.stderr)
            for line in entry["warnings"]:
                print(f"warning: {line}", file=sys.stderr)
    if not all(entry["ok"] for entry in report):
        raise typer.Exit(int(ExitCode.USAGE))


@app.command("import")
def import_runs(
    script: Annotated[Path, typer.Argument(help="shell script with `python main.py ...` lines of the original codebase")],
    out: Annotated[Path | None, typer.Option("--out", help="folder for the preset files (default: your preset folder)")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite existing preset files")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="convert and validate, write nothing")] = False,
    as_json: JsonOption = False,
) -> None:
    """Turn lines of an original runs file into preset files (one per group; seeds collected)."""
    from engine.config.legacy import convert_runs_file
    from engine.config.presets import ConfigError, display_path, flatten, validate_tree, write_preset

    if not script.is_file():
        fail(f"{script} does not exist", ExitCode.NOT_FOUND)
    converted = convert_runs_file(script.read_text())
    for warning in converted.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not converted:
        fail(f"{script}: no `python main.py ...` or `python -m engine ...` line found", ExitCode.USAGE)
    out = out or home.user_presets_dir()
    problems, plan = [], []
    for preset in converted:
        target = out / f"{preset.name}.toml"
        try:
            validate_tree(preset.overrides, dict.fromkeys(flatten(preset.overrides), f"{script}:{preset.source_lines[0]}"))
        except ConfigError as error:
            problems.extend(error.lines)
            continue
        if target.exists() and not force:
            problems.append(f"{display_path(target)} exists; pass --force to overwrite")
            continue
        plan.append((preset, target))
    if problems:
        fail(problems, ExitCode.USAGE)  # nothing written when any preset is bad
    if not dry_run:
        for preset, target in plan:
            write_preset(target, preset.overrides, description=f"imported from {script.name} lines {preset.source_lines}",
                         seeds=preset.seeds)
    summary = [
        {"name": p.name, "path": str(t), "seeds": p.seeds, "lines": p.source_lines, "warnings": p.warnings, "written": not dry_run}
        for p, t in plan
    ]
    if as_json:
        print_json(summary)
        return
    for entry in summary:
        verb = "would write" if dry_run else "wrote"
        stdout.print(f"{verb} {display_path(Path(entry['path']))} (seeds {entry['seeds']})", highlight=False)
        for warning in entry["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
