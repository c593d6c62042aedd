"""The ``dmltui`` command line (typer). Each command group lives in its own module."""

from __future__ import annotations

import signal
import sys

import typer

from dmltui.cli import compare, data, db, inspect, launch, plot, presets, quickstart, runs, schema, tui, tune, views
from dmltui.cli.common import ExitCode
from dmltui.home import SettingError
from dmltui.store import StoreBusy, StoreError

app = typer.Typer(
    name="dmltui",
    help="Deep metric learning runs: presets, training, run store. Without a command: the terminal UI.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
app.add_typer(presets.app, name="presets")
app.add_typer(runs.app, name="runs")
app.add_typer(db.app, name="db")
app.add_typer(data.app, name="data")
app.add_typer(tune.app, name="tune")
app.add_typer(plot.app, name="plot")
app.add_typer(views.app, name="views")
app.command("quickstart")(quickstart.quickstart)
app.command("run")(launch.run)
app.command("sweep")(launch.sweep)
app.command("import")(db.import_runs)
app.command("doctor")(db.doctor)
app.command("schema")(schema.schema)
app.command("compare")(compare.compare)
app.command("report")(compare.report)
app.command("tui")(tui.tui)
app.command("inspect")(inspect.inspect)
app.command("export")(inspect.export)
app.command("search")(inspect.search)


def _interrupted(signum: int, frame: object) -> None:
    print("interrupted", file=sys.stderr)
    raise SystemExit(int(ExitCode.INTERRUPTED))  # click would turn KeyboardInterrupt into exit code 1


def main() -> None:
    signal.signal(signal.SIGINT, _interrupted)
    try:
        app()
    except StoreBusy as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(int(ExitCode.BUSY)) from None
    except StoreError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(int(ExitCode.FAILED)) from None
    except SettingError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(int(ExitCode.USAGE)) from None
    except OSError as error:  # a full disk or a permission problem outside the store: one line, not a traceback
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        raise SystemExit(int(ExitCode.FAILED)) from None
