"""The dmltui terminal UI: one Textual app over the same run operations as the CLI.

The app owns one ``RunsMonitor`` and polls it once a second in a worker thread; screens
watch ``runs_version`` and redraw from ``app.monitor`` when it changes. Every action of
the active screen is also a command in the palette (ctrl+p). Quitting never stops a run:
runs are detached processes.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen

from dmltui.monitor import RunsMonitor

POLL_SECONDS = 1.0


class DmlTuiApp(App):
    """Runs, new runs from presets, live run views, comparison and GPUs."""

    CSS_PATH = "app.tcss"
    TITLE = "dmltui"
    SUB_TITLE = "deep metric learning runs"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("ctrl+p", "command_palette", "Commands", show=False),
    ]

    runs_version: reactive[int] = reactive(0, init=False)

    def __init__(self, *, monitor: RunsMonitor | None = None, poll_seconds: float = POLL_SECONDS,
                 clock: Callable[[], datetime] | None = None, **kwargs: Any):
        """*clock* fixes "now" (durations, dates) for tests and snapshots."""
        super().__init__(**kwargs)
        self.monitor = monitor or RunsMonitor()
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.store_error: str | None = None
        # one poll at a time: Worker.cancel() cannot stop a thread, so a tick that finds a poll still running is skipped
        # (two would race on the one monitor, and a slower one could install an older snapshot)
        self._polling = threading.Lock()
        self._frozen = False

    def on_mount(self) -> None:
        from dmltui.tui.screens.runs import RunsScreen

        self.push_screen(RunsScreen())
        self.refresh_runs()
        if self.poll_seconds > 0:
            self.set_interval(self.poll_seconds, self.refresh_runs)

    # ----------------------------------------------------------------- run data
    def refresh_runs(self) -> None:
        """Poll the store and the live run directories off the UI thread, unless a poll is running already."""
        if self._polling.acquire(blocking=False):
            self._poll()

    @work(thread=True, group="poll", exit_on_error=False)
    def _poll(self) -> None:
        from dmltui.store import StoreError

        try:
            changed = self.monitor.poll()
            error = None
        except StoreError as problem:  # a corrupt or busy store: say so, keep the last known runs
            changed, error = False, str(problem)
        except Exception as problem:  # noqa: BLE001 - e.g. a run folder that became unreadable: said, retried next tick
            changed, error = False, f"polling the runs failed: {type(problem).__name__}: {problem}"
        finally:
            self._polling.release()
        self.call_from_thread(self._after_poll, changed, error)

    def _after_poll(self, changed: bool, error: str | None) -> None:
        """Tell the screens about new runs. The records the monitor holds live long and hold no reference cycles:
        frozen out of the cyclic garbage collector, 10,000 runs' dicts stop costing every full collection (tens of
        milliseconds, which a keystroke would otherwise wait for); they are still freed by reference counting."""
        if error != self.store_error:
            self.store_error = error
            if error:
                self.notify(error, title="run store", severity="error", timeout=10)
        if changed:
            if not self._frozen:  # the first load (thousands of records): frozen once, see above
                gc.freeze()
                self._frozen = True
            self.runs_version += 1

    @work(thread=True, group="operations", exit_on_error=False)
    def run_operation(self, operation: str, record: dict[str, Any]) -> None:
        """stop, resume, rerun or delete a run with the CLI's own functions, off the UI thread (stopping waits for
        the engine's checkpoint); the outcome is a notification, and the runs are polled again."""
        from dmltui import runs as run_ops

        name = record.get("name", record["id"])
        try:
            record = run_ops.reconcile(record["id"], self.monitor.store)
            if operation == "stop":
                message = f"{record['name']} {run_ops.stop(record)['state']}"
            elif operation == "resume":
                message = f"{record['name']} {run_ops.resume(record)['state']}"
            elif operation == "rerun":
                new = run_ops.rerun(record)
                message = f"started {new['name']} ({new['id']})"
            elif operation == "delete":
                run_ops.remove(record)
                message = f"deleted {record['name']}"
            else:
                raise ValueError(f"unknown run operation {operation!r}")
            severity = "information"
        except (run_ops.RunError, KeyError, ValueError) as error:  # wrong state, gone meanwhile, no GPU for it
            message, severity = str(error), "error"
        except Exception as error:  # noqa: BLE001 - a busy store, an OSError of Popen or of the file system: said
            message, severity = f"{operation} {name} failed: {type(error).__name__}: {error}", "error"
        self.call_from_thread(self.notify, message, severity=severity)
        self.call_from_thread(self.refresh_runs)

    def now(self) -> datetime:
        return self.clock() if self.clock else datetime.now(UTC)

    def run_record(self, run_id: str) -> dict[str, Any] | None:
        return self.monitor.records.get(run_id)

    # ----------------------------------------------------------------- navigation
    def action_help(self) -> None:
        from dmltui.tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette offers every action of the active screen, named as in its footer."""
        titles = set()
        for command in super().get_system_commands(screen):
            titles.add(command.title)
            yield command
        for binding in [*screen.BINDINGS, *self.BINDINGS]:
            if not isinstance(binding, Binding) or not binding.description or binding.description in titles:
                continue
            if binding.action == "command_palette":
                continue
            titles.add(binding.description)
            target = self if binding in self.BINDINGS else screen
            yield SystemCommand(
                binding.description,
                binding.tooltip or f"{binding.description} ({binding.key_display or binding.key})",
                lambda target=target, action=binding.action: self.call_later(target.run_action, action),
            )
