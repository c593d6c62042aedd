"""The new-run screen: pick a preset, edit overrides in a form built from the config's schema, launch runs or a sweep.

Everything slow happens in workers: reading the presets, building the field list from the JSON
schema, reading the select choices (engine.catalog: the registries' names without torch, so the
form is ready within a second of opening, cold), resolving the highlighted preset and validating
the form. Validation and launching call the CLI's own
``dmltui.launching.plan_runs``/``start_runs`` (and ``slurm_settings`` for the SLURM target, as ``--on slurm``
does): the same error lines, the same runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.suggester import SuggestFromList
from textual.timer import Timer
from textual.widgets import Button, Footer, Header, Input, Label, OptionList, Select, Static, TextArea
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from dmltui.form_fields import (
    FieldSpec,
    cli_command,
    error_key,
    error_message,
    flat_config,
    grid_lines,
    run_count,
    split_tags,
    toml_literal,
)
from dmltui.gpus import resolve_request
from dmltui.tui.screens.dialogs import ConfirmScreen
from dmltui.tui.widgets.config_form import ConfigForm

DEFAULT_PRESET = "quickstart"
VALIDATE_DELAY = 0.4  # seconds of quiet typing before the form is validated
VALIDATE_SOON = 0.01  # after a preset resolved: at once (a Textual timer may not be 0)
RESOLVE_DELAY = 0.2  # seconds a preset stays highlighted before it is resolved
SUMMARY_LINES = 4
NO_DATASET = "(none)"
# what the help line says about each launch control when it has the focus (also their mouse tooltips)
CONTROL_HELP = {
    "nr-filter": "Filter the presets: words of their names or descriptions; enter goes to the list",
    "nr-preset-list": "The preset to start from: up/down picks it (the form follows); tab goes on to the form",
    "nr-dataset": "Compose a dataset preset after the chosen one, as in `dmltui run margin-b12-d cub200`",
    "nr-seeds": "Seeds like 0-4 or 0,3,7 (one run per seed); empty: the preset's seeds",
    "nr-on": "Where the runs execute: this machine (detached processes), or SLURM (one job array with the [slurm] "
             "settings of the user config file)",
    "nr-gpus": "auto (each run queues for a free GPU), cpu, or GPU indices like 0,1; empty: auto if this machine has GPUs, else cpu",
    "nr-name": "Run name stem; -s<seed> is appended (sweeps add the grid values); empty: the preset's name",
    "nr-tags": "Tags of the new runs, comma-separated",
    "nr-grid": "Sweep grid: one KEY=V1,V2,... per line; the runs are the product of the lines x the seeds",
    "nr-launch-button": "Validate the form and start the run(s) (ctrl+s)",
}
TARGETS = {"local": "this machine", "slurm": "SLURM"}  # the values of --on, as the form shows them
HINT = ("tab: next field, explained here · ctrl+r resets a field\n"
        "values are the preset's; edited ones (*) are overrides")


@dataclass
class Request:
    """A snapshot of the form: everything plan_runs and start_runs need."""

    presets: list[str]
    overrides: list[str]
    seeds: str
    gpus: str
    name: str
    tags: list[str]
    grid: list[str]
    on: str = "local"  # where the runs execute: local or slurm (launching.slurm_settings)
    local_errors: dict[str, str] = field(default_factory=dict)  # field key or seeds/on/gpus/grid -> message


@dataclass
class Outcome:
    """What validating a request found."""

    problems: list[str]
    warnings: list[str] = field(default_factory=list)
    runs: list[tuple[str, dict[str, str], int]] = field(default_factory=list)  # (name, grid values, seed)


def _plan(request: Request):
    """plan_runs on the request; returns (planned runs, Outcome). Runs in a worker."""
    from dmltui.launching import device_problems, plan_runs
    from engine.config.presets import ConfigError

    planned = []
    try:
        planned, warnings = plan_runs(request.presets, request.overrides, seeds=request.seeds.strip() or None,
                                      name=request.name.strip() or None, grid=request.grid or None, tags=request.tags)
        devices = device_problems(planned, request.gpus) if request.on == "local" else []  # SLURM: the [slurm] table's GPUs
        outcome = Outcome(devices, warnings, [(run.name, run.grid, run.seed) for run in planned])
    except ConfigError as error:
        outcome = Outcome(list(error.lines))
    except ValueError as error:
        outcome = Outcome([str(error)])
    return planned, outcome


def _without_set_source(line: str) -> str:
    """'--set optim.epochs: optim.epochs = -1: …' reads as 'optim.epochs = -1: …' (preset files stay named)."""
    return error_message(line, None) if line.startswith("--set ") else line


def _slurm_missing() -> str | None:
    """Why this machine cannot submit to SLURM (no sbatch on the PATH...), None when it can."""
    from dmltui.executors.slurm import SlurmError, check_available

    try:
        check_available()
    except SlurmError as error:
        return str(error)
    return None


def _slurm_problem() -> str | None:
    """What keeps the runs from going to SLURM as the CLI's ``--on slurm`` would send them: a bad [slurm] setting in
    the user config file, or no sbatch; None when nothing does."""
    from dmltui.executors.slurm import SlurmError
    from dmltui.home import SettingError
    from dmltui.launching import slurm_settings

    try:
        slurm_settings("slurm")
    except (SlurmError, SettingError) as error:
        return str(error)
    return None


class PreviewScreen(ModalScreen[None]):
    """The dry run: the runs the form would start, its overrides and the equivalent CLI command."""

    BINDINGS = [Binding("escape,q,ctrl+t", "dismiss", "Close")]

    def __init__(self, request: Request, outcome: Outcome):
        super().__init__()
        self.request, self.outcome = request, outcome

    def compose(self) -> ComposeResult:
        request, outcome = self.request, self.outcome
        lines: list[str] = []
        if outcome.problems or request.local_errors:
            n = len(outcome.problems) + len(request.local_errors)
            lines.append(f"[b red]Invalid: nothing would start[/] ({n} problem{'s' if n != 1 else ''})")
            lines += [f"  [red]✗[/] {escape(k)}: {escape(m)}" for k, m in request.local_errors.items()]
            lines += [f"  [red]✗[/] {escape(p)}" for p in outcome.problems]
        else:
            lines.append(f"[b green]Valid[/]: {len(outcome.runs)} run{'s' if len(outcome.runs) != 1 else ''} would start")
            for name, grid, seed in outcome.runs:
                axes = " ".join(f"{k}={v}" for k, v in grid.items())
                lines.append(f"  {escape(name)}  [dim]{escape(axes)} seed={seed}[/]")
        lines += [f"  [yellow]warning:[/] {escape(w)}" for w in outcome.warnings]
        lines.append("")
        lines.append("[b]Overrides[/]: " + (escape(" ".join(request.overrides)) if request.overrides else "none"))
        lines.append("")
        lines.append("[b]Command line[/]")
        lines.append(escape(cli_command(request.presets, request.overrides, seeds=request.seeds, gpus=request.gpus,
                                        name=request.name, tags=request.tags, grid=request.grid, on=request.on)))
        with VerticalScroll(classes="dialog preview"):
            yield Static("\n".join(lines))
            yield Static("[dim]escape closes[/dim]")


class NewRunScreen(Screen):
    """Compose a run (or a sweep) from a preset and launch it."""

    BINDINGS = [
        Binding("ctrl+s", "launch", "Launch", tooltip="Validate the form and start the run(s) as detached processes"),
        Binding("ctrl+t", "preview", "Preview", tooltip="Dry run: validate and list the runs, the overrides and the CLI command"),
        # The keys that move the focus are priority bindings, handled as the app reads them: keys that arrive together
        # (a loaded machine, a fast typist, tmux) are routed to the widget focused when each is read, so a focus move
        # left to the focused widget's queue would send the keys behind it to the field it is leaving.
        Binding("ctrl+g", "toggle_sweep", "Sweep", priority=True,
                tooltip="Sweep mode on/off: grid lines KEY=V1,V2; the runs are the product x seeds"),
        Binding("ctrl+r", "reset_field", "Reset", show=False, tooltip="Reset the focused field to the preset's value"),
        Binding("ctrl+o", "focus_presets", "Presets", show=False, priority=True,
                tooltip="Go to the preset list (type to filter it)"),
        Binding("tab", "app.focus_next", show=False, priority=True),
        Binding("shift+tab", "app.focus_previous", show=False, priority=True),
        Binding("escape", "back", "Back", tooltip="Back to the runs; nothing is started (asks first if you edited the form)"),
    ]

    def __init__(self, preset: str | None = None):
        super().__init__()
        self.initial_preset = preset
        self.preset: str | None = None
        self.dataset_preset: str | None = None
        self.entries: list[tuple[str, str]] = []  # (name, description) of every preset
        self.specs: list[FieldSpec] = []
        self.choices: dict[str, list[str]] = {}
        self.resolved: dict[str, Any] | None = None  # description, seeds, chain, warnings of the preset
        self.resolve_error: list[str] = []
        self.outcome: Outcome | None = None
        self.generation = 0  # validation results of an older form are dropped
        self.validated_generation = -1
        self.launching = False
        self.pending_preview = False
        self.baseline: dict[str, Any] = {}  # the preset's resolved config, flat
        self.local_errors: dict[str, str] = {}
        self.last_request: Request | None = None
        self._form: ConfigForm | None = None
        self._validate_timer: Timer | None = None
        self._resolve_timer: Timer | None = None
        self.slurm_missing = _slurm_missing()  # why SLURM is not offered here (None: it is)

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="nr-body"):
            with Vertical(id="nr-presets"):
                yield Input(placeholder="filter presets", id="nr-filter", compact=True)
                yield OptionList(id="nr-preset-list", compact=True)
                yield Label("+ dataset preset", classes="nr-caption")
                yield Select([(NO_DATASET, NO_DATASET)], value=NO_DATASET, allow_blank=False, id="nr-dataset", compact=True)
            with Vertical(id="nr-main"):
                yield Static("loading presets…", id="nr-info")
                yield Static("loading the config schema…", id="nr-loading")
                yield Static(HINT, id="nr-help")
        with Vertical(id="nr-launch"):
            with Horizontal(classes="nr-row"):
                yield Label("seeds", classes="nr-caption")
                yield Input(placeholder="", id="nr-seeds", compact=True)
                yield Label("on", classes="nr-caption")
                yield Select([(TARGETS[t], t) for t in TARGETS if t == "local" or not self.slurm_missing], value="local",
                             allow_blank=False, id="nr-on", compact=True)
                yield Label("gpus", classes="nr-caption")
                yield Input(placeholder=resolve_request(None), id="nr-gpus", compact=True,  # this machine's default
                            suggester=SuggestFromList(["auto", "cpu"]))
                yield Label("name", classes="nr-caption")
                yield Input(placeholder="", id="nr-name", compact=True)
                yield Label("tags", classes="nr-caption")
                yield Input(placeholder="none", id="nr-tags", compact=True)
            with Horizontal(classes="nr-row", id="nr-grid-row"):
                yield Label("grid", classes="nr-caption")
                yield TextArea("", id="nr-grid", compact=True, tab_behavior="focus", soft_wrap=False,
                               placeholder="one axis per line: loss.name=margin,triplet")
            with Horizontal(classes="nr-row"):
                yield Static("", id="nr-status")
                yield Button("Launch ^s", id="nr-launch-button", variant="primary", compact=True)
            yield Static("", id="nr-problems")
        yield Footer()

    def on_mount(self) -> None:
        for widget_id in CONTROL_HELP:
            self.query_one(f"#{widget_id}").tooltip = self.control_help(widget_id)
        self.query_one("#nr-grid-row").display = False
        self.query_one("#nr-problems").display = False
        self.query_one("#nr-preset-list", OptionList).focus()
        self.load_presets()
        self.load_schema()

    # ------------------------------------------------------------------ loading (workers)
    @work(thread=True, group="load", exit_on_error=False)
    def load_presets(self) -> None:
        from dmltui import home
        from dmltui.imports import ENGINE_IMPORT

        with ENGINE_IMPORT:
            library = home.preset_library()
        entries = []
        for name in library.names():
            try:
                description = library.read(library.find(name)).get("description", "")
            except Exception:  # a broken preset still shows; resolving it names the problem
                description = ""
            entries.append((name, description if isinstance(description, str) else ""))
        self.app.call_from_thread(self._presets_loaded, entries)

    @work(thread=True, group="schema", exit_on_error=False)
    def load_schema(self) -> None:
        from dmltui.form_fields import field_specs, registry_choices

        specs = field_specs()
        self.app.call_from_thread(self._schema_loaded, specs)
        choices = registry_choices()
        self.app.call_from_thread(self._choices_loaded, choices)

    def _presets_loaded(self, entries: list[tuple[str, str]]) -> None:
        if not self.is_attached:
            return  # left before loading finished
        self.entries = entries
        names = [name for name, _ in entries]
        wanted = self.initial_preset or (DEFAULT_PRESET if DEFAULT_PRESET in names else names[0] if names else None)
        if self.initial_preset and self.initial_preset not in names:
            self.notify(f"no preset named {self.initial_preset!r}", severity="warning")
            wanted = DEFAULT_PRESET if DEFAULT_PRESET in names else names[0] if names else None
        self.preset = wanted
        self._fill_preset_list()
        self._dataset_options()
        if wanted:
            self._show_info()
            self.resolve_preset(self.presets())

    def _schema_loaded(self, specs: list[FieldSpec]) -> None:
        if not self.is_attached:
            return  # left before loading finished
        self.specs = specs
        self.query_one("#nr-loading", Static).update("resolving the preset…")
        self._ensure_form()

    def _ensure_form(self) -> None:
        """The form appears once the fields and the preset's values are both known (then it follows the preset)."""
        if self.form is not None or not self.specs or self.resolved is None:
            return
        form = self._form = ConfigForm(self.specs, self.baseline, id="nr-form")
        self.query_one("#nr-loading").display = False
        self.query_one("#nr-main").mount(form, after="#nr-info")
        if self.choices:
            form.set_choices(self.choices)

    def _choices_loaded(self, choices: dict[str, list[str]]) -> None:
        if not self.is_attached:
            return  # left before loading finished
        self.choices = choices
        form = self.form
        if form is not None:
            form.set_choices(choices)
        self._dataset_options()
        self.schedule_validation(delay=VALIDATE_SOON)

    def _dataset_options(self) -> None:
        """The dataset presets (presets named after a dataset), once both the presets and the registries are known."""
        datasets = [name for name, _ in self.entries if name in self.choices.get("dataset", [])]
        select = self.query_one("#nr-dataset", Select)
        select.set_options([(NO_DATASET, NO_DATASET), *((d, d) for d in datasets)])
        select.value = self.dataset_preset or NO_DATASET

    def on_worker_state_changed(self, event) -> None:
        """A worker that fails says so instead of leaving the screen "loading" forever."""
        from textual.worker import WorkerState

        if event.state == WorkerState.ERROR:
            error = event.worker.error
            message = f"{event.worker.name} failed: {type(error).__name__}: {error}"
            self.launching = False
            self.query_one("#nr-status", Static).update(Text(message, style="bold red"))
            self.notify(message, severity="error", timeout=15)

    # ------------------------------------------------------------------ presets
    @property
    def form(self) -> ConfigForm | None:
        return self._form

    def presets(self) -> list[str]:
        return [p for p in (self.preset, self.dataset_preset) if p]

    def _fill_preset_list(self) -> None:
        words = self.query_one("#nr-filter", Input).value.lower().split()
        shown = [(n, d) for n, d in self.entries if all(w in f"{n} {d}".lower() for w in words)]
        options = self.query_one("#nr-preset-list", OptionList)
        options.clear_options()
        options.add_options([Option(name, id=name) for name, _ in shown])
        names = [n for n, _ in shown]
        if self.preset in names:
            options.highlighted = names.index(self.preset)

    @on(Input.Changed, "#nr-filter")
    def _filter_changed(self) -> None:
        self._fill_preset_list()

    @on(Input.Submitted, "#nr-filter")
    def _filter_done(self) -> None:
        self.set_focus(self.query_one("#nr-preset-list", OptionList))

    @on(OptionList.OptionHighlighted, "#nr-preset-list")
    def _preset_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        name = event.option.id
        if name == self.preset:
            return
        self.preset = name
        self.resolved, self.resolve_error = None, []
        self._show_info()
        if self._resolve_timer is not None:
            self._resolve_timer.stop()
        self._resolve_timer = self.set_timer(RESOLVE_DELAY, lambda: self.resolve_preset(self.presets()))

    @on(OptionList.OptionSelected, "#nr-preset-list")
    def _preset_chosen(self) -> None:
        """Enter on a preset: on to the form."""
        self.set_focus(self.query_one("#nr-dataset", Select))

    @on(Select.Changed, "#nr-dataset")
    def _dataset_changed(self, event: Select.Changed) -> None:
        value = None if event.value in (NO_DATASET, Select.NULL) else str(event.value)
        if value == self.dataset_preset:
            return
        self.dataset_preset = value
        self.resolved, self.resolve_error = None, []
        self._show_info()
        self.resolve_preset(self.presets())

    @work(thread=True, exclusive=True, group="resolve", exit_on_error=False)
    def resolve_preset(self, presets: list[str]) -> None:
        from dmltui import home
        from engine.config.presets import ConfigError, resolve

        try:
            resolved = resolve(presets, library=home.preset_library())
            result: dict[str, Any] = {"description": resolved.description, "seeds": resolved.seeds, "chain": resolved.chain,
                                      "warnings": resolved.warnings, "values": flat_config(resolved.config.to_dict())}
            error: list[str] = []
        except ConfigError as problem:
            result, error = {}, list(problem.lines)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._preset_resolved, presets, result, error)

    def _preset_resolved(self, presets: list[str], result: dict[str, Any], error: list[str]) -> None:
        if presets != self.presets() or not self.is_attached:
            return  # the highlight moved on, or the screen is gone
        self.resolve_error = error
        if error:
            self.resolved = None
            if self.form is None:
                self.query_one("#nr-loading", Static).update("this preset does not resolve (see above): pick another")
        else:
            self.resolved = result
            self.baseline = result["values"]
            seeds = result["seeds"]
            self.query_one("#nr-seeds", Input).placeholder = ",".join(map(str, seeds)) if seeds else "config's"
            self.query_one("#nr-name", Input).placeholder = presets[-1]
            form = self.form
            if form is not None:
                form.set_baseline(self.baseline)
            else:
                self._ensure_form()
        self._show_info()
        self.update_count()
        self.schedule_validation(delay=VALIDATE_SOON)

    def _show_info(self) -> None:
        info = self.query_one("#nr-info", Static)
        if not self.preset:
            info.update("no presets found")
            return
        raw = dict(self.entries).get(self.preset, "")
        title = Text(" + ".join(self.presets()), style="bold")
        if self.resolve_error:
            info.update(Text.assemble(title, "\n", Text("\n".join(self.resolve_error), style="red")))
            return
        if self.resolved is None:
            info.update(Text.assemble(title, "  ", Text("resolving…", style="dim"), "\n", raw))
            return
        seeds = self.resolved["seeds"]
        details = [f"seeds {','.join(map(str, seeds))}" if seeds else "seed from config",
                   "chain " + " → ".join(p.rsplit("/", 1)[-1].removesuffix(".toml") for p in self.resolved["chain"])]
        info.update(Text.assemble(title, "  ", Text(" · ".join(details), style="dim"), "\n",
                                  self.resolved["description"] or raw))

    # ------------------------------------------------------------------ the form
    @on(ConfigForm.FieldFocused)
    def _field_focused(self, event: ConfigForm.FieldFocused) -> None:
        spec = event.spec
        preset_value = self.baseline.get(spec.key)
        text = Text.assemble((spec.key, "bold"), f" ({spec.type_text})  ",
                             ("preset: ", "dim"), (toml_literal(preset_value) if preset_value is not None else "unset", "dim"),
                             "\n", spec.description)
        self.query_one("#nr-help", Static).update(text)

    def on_descendant_focus(self, event) -> None:
        """Outside the form, the help line explains the focused control (tooltips need a mouse)."""
        widget = event.widget
        if self.form is not None and self.form in widget.ancestors:
            return
        self.query_one("#nr-help", Static).update(self.control_help(widget.id or ""))

    def control_help(self, widget_id: str) -> Text:
        """What the help line says about a launch control (the target says why SLURM is not offered, where it is not);
        plain text, as it names the [slurm] table."""
        if widget_id == "nr-on" and self.slurm_missing:
            return Text(f"Where the runs execute: this machine. SLURM is not offered: {self.slurm_missing}")
        if widget_id == "nr-gpus" and self.target == "slurm":
            return Text("On SLURM, each run's GPUs are the [slurm] table's gpus_per_task (the user config file), not these")
        return Text(CONTROL_HELP.get(widget_id, HINT))

    @property
    def target(self) -> str:
        """Where the runs execute: local or slurm."""
        return str(self.query_one("#nr-on", Select).value)

    @on(ConfigForm.Changed)
    def _form_changed(self) -> None:
        self.schedule_validation()

    @on(Select.Changed, "#nr-on")
    def _target_changed(self) -> None:
        self.query_one("#nr-gpus", Input).disabled = self.target == "slurm"  # SLURM's GPUs come from the [slurm] table
        self._launch_controls_changed()

    @on(Input.Changed, "#nr-seeds, #nr-gpus, #nr-name, #nr-tags")
    @on(TextArea.Changed, "#nr-grid")
    def _launch_controls_changed(self) -> None:
        self.update_count()
        self.schedule_validation()

    def request(self) -> Request:
        """The form's state now (on the UI thread)."""
        local: dict[str, str] = {}
        form = self.form
        overrides: list[str] = []
        if form is not None and self.baseline:
            found = form.overrides()
            overrides, local = found.overrides, dict(found.errors)
        seeds = self.query_one("#nr-seeds", Input).value
        gpus = self.query_one("#nr-gpus", Input).value.strip() or None
        grid = grid_lines(self.query_one("#nr-grid", TextArea).text) if self.sweep else []
        from dmltui.launching import parse_grid, parse_seeds  # imported by the workers by now

        on = self.target
        if on == "slurm":
            problem = _slurm_problem()
            if problem:
                local["on"] = problem
            gpus = "cpu"  # as the CLI passes it with --on slurm: the runs' GPUs are the [slurm] table's
        else:
            try:
                gpus = resolve_request(gpus)
            except ValueError as error:
                local["gpus"] = str(error)
                gpus = gpus or "cpu"
        if seeds.strip():
            try:
                parse_seeds(seeds)
            except ValueError as error:
                local["seeds"] = str(error)
                seeds = ""
        try:
            parse_grid(grid)
        except ValueError as error:
            local["grid"] = str(error)
            grid = []
        if self.sweep and not grid and "grid" not in local:
            local["grid"] = "sweep mode: add a grid line KEY=V1,V2 (or turn sweep off with ctrl+g)"
        return Request(self.presets(), overrides, seeds, gpus, self.query_one("#nr-name", Input).value,
                       split_tags(self.query_one("#nr-tags", Input).value), grid, on, local)

    @property
    def sweep(self) -> bool:
        return bool(self.query_one("#nr-grid-row").display)

    def update_count(self) -> None:
        """The live count of runs that will start (no validation needed)."""
        status = self.query_one("#nr-status", Static)
        if self.resolved is None:
            status.update(Text("resolving the preset…" if not self.resolve_error else "the preset does not resolve", style="dim"))
            return
        grid = grid_lines(self.query_one("#nr-grid", TextArea).text) if self.sweep else []
        where = " on SLURM" if self.target == "slurm" else ""
        try:
            count = run_count(self.query_one("#nr-seeds", Input).value, self.resolved["seeds"], grid)
            count_text = Text(f"{count} run{'s' if count != 1 else ''}{where}", style="bold")
        except ValueError:
            count_text = Text(f"? runs{where}", style="bold")
        state = self._state_text()
        status.update(Text.assemble(count_text, " · ", state))

    def _state_text(self) -> Text:
        if not self.choices:
            return Text("loading the registries…", style="dim")
        if self.validated_generation != self.generation or self.outcome is None:
            return Text("validating…", style="dim")
        n = len(self.outcome.problems) + len(self.local_errors)
        if n:
            return Text(f"✗ {n} problem{'s' if n != 1 else ''}: nothing will start", style="bold red")
        overrides = len(self.last_request.overrides) if self.last_request else 0
        warn = f", {len(self.outcome.warnings)} warning{'s' if len(self.outcome.warnings) != 1 else ''}" if self.outcome.warnings else ""
        return Text.assemble(("✓ valid", "bold green"), f" · {overrides} override{'s' if overrides != 1 else ''}{warn}")

    # ------------------------------------------------------------------ validation
    def schedule_validation(self, delay: float = VALIDATE_DELAY) -> None:
        """Validate after *delay* seconds without another change (typing waits; a preset just resolved does not)."""
        self.generation += 1
        if self._validate_timer is not None:
            self._validate_timer.stop()
        if self.resolved is None or not self.choices:
            self.update_count()
            return
        self.update_count()
        self._validate_timer = self.set_timer(delay, self._validate_now)

    def _validate_now(self) -> None:
        if self.resolved is None or not self.choices:
            return
        request = self.request()
        self.validate(request, self.generation)

    @work(thread=True, exclusive=True, group="validate", exit_on_error=False)
    def validate(self, request: Request, generation: int) -> None:
        _planned, outcome = _plan(request)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._validated, request, outcome, generation)

    def _validated(self, request: Request, outcome: Outcome, generation: int) -> None:
        if generation != self.generation or not self.is_attached:
            return  # the form changed meanwhile; a newer validation is on its way
        self.validated_generation = generation
        self.show_outcome(request, outcome)
        if self.pending_preview:
            self.pending_preview = False
            self.app.push_screen(PreviewScreen(request, outcome))

    def show_outcome(self, request: Request, outcome: Outcome) -> None:
        self.outcome, self.last_request, self.local_errors = outcome, request, request.local_errors
        form = self.form
        keys = set(form.by_key) if form is not None else set()
        grid_keys = {line.partition("=")[0].strip() for line in request.grid}
        field_errors: dict[str, str] = {}
        control_errors: dict[str, str] = {}
        for key, message in request.local_errors.items():
            (field_errors if key in keys else control_errors)[key] = message
        for line in outcome.problems:
            key = error_key(line, keys | grid_keys)
            if key in grid_keys:
                control_errors.setdefault("grid", error_message(line, None))
            elif key in keys:
                field_errors.setdefault(key, error_message(line, key))
        if form is not None:
            form.show_errors(field_errors)
        for name in ("seeds", "on", "gpus", "grid"):
            self.query_one(f"#nr-{name}").set_class(name in control_errors, "-invalid")
        lines = [Text(f"✗ {k}: {m}", style="red") for k, m in request.local_errors.items()]
        lines += [Text(f"✗ {_without_set_source(p)}", style="red") for p in outcome.problems]
        lines += [Text(f"! {_without_set_source(w)}", style="yellow") for w in outcome.warnings]
        problems = self.query_one("#nr-problems", Static)
        if len(lines) > SUMMARY_LINES:
            more = len(lines) - SUMMARY_LINES + 1
            lines = [*lines[:SUMMARY_LINES - 1], Text(f"… and {more} more (ctrl+t lists them all)", style="dim")]
        problems.update(Text("\n").join(lines))
        problems.display = bool(lines)
        self.update_count()

    # ------------------------------------------------------------------ actions
    def edits(self) -> list[str]:
        """What leaving would discard: the form's overrides (valid or not) and the launch controls that were filled."""
        found: list[str] = []
        if self.form is not None:
            found += self.form.overrides().changed
        found += [f"{name}: {value}" for name in ("seeds", "gpus", "name", "tags")
                  if (value := self.query_one(f"#nr-{name}", Input).value.strip())]
        found += [f"on: {TARGETS[self.target]}"] if self.target != "local" else []
        found += grid_lines(self.query_one("#nr-grid", TextArea).text)
        return found

    def action_back(self) -> None:
        edits = self.edits()
        if not edits:
            self.dismiss()
            return
        shown = ", ".join(edits[:3]) + (f" and {len(edits) - 3} more" if len(edits) > 3 else "")
        self.app.push_screen(ConfirmScreen(f"Discard your edits ({shown})?", confirm_label="Discard", danger=True),
                             lambda discard: discard and self.dismiss())

    def action_focus_presets(self) -> None:
        # now, not with widget.focus()'s call_later: the keys typed after ctrl+o may already be queued, and they
        # belong to the preset list
        self.set_focus(self.query_one("#nr-preset-list", OptionList))

    def action_toggle_sweep(self) -> None:
        row = self.query_one("#nr-grid-row")
        row.display = not row.display
        if row.display:
            self.set_focus(self.query_one("#nr-grid", TextArea))
        self.update_count()
        self.schedule_validation()

    def action_reset_field(self) -> None:
        form = self.form
        focused = self.focused
        if form is None or focused is None:
            return
        from dmltui.tui.widgets.config_form import FieldRow

        row = next((a for a in focused.ancestors_with_self if isinstance(a, FieldRow)), None)
        if row is not None:
            form.reset(row.spec.key)

    def action_preview(self) -> None:
        if self.resolved is None or not self.choices:
            self.notify("still loading the preset and the registries", severity="warning")
            return
        self.pending_preview = True
        self.generation += 1
        if self._validate_timer is not None:
            self._validate_timer.stop()
        self.validate(self.request(), self.generation)

    @on(Button.Pressed, "#nr-launch-button")
    def _launch_pressed(self) -> None:
        self.action_launch()

    def action_launch(self) -> None:
        if self.launching:
            return
        if self.resolved is None or not self.choices:
            self.notify("still loading the preset and the registries; nothing started", severity="warning")
            return
        request = self.request()
        try:
            count = run_count(request.seeds, self.resolved["seeds"], request.grid)
        except ValueError:
            count = 0
        if count > 1 and not request.local_errors:
            where = " on SLURM" if request.on == "slurm" else ""
            question = f"Start {count} runs of {' + '.join(request.presets)}{where}" + (" (sweep)?" if request.grid else "?")
            self.app.push_screen(ConfirmScreen(question, confirm_label="Start"),
                                 lambda yes: yes and self._launch(request))
        else:
            self._launch(request)

    def _launch(self, request: Request) -> None:
        self.launching = True
        self.query_one("#nr-status", Static).update(Text("validating and starting…", style="bold"))
        self.generation += 1
        if self._validate_timer is not None:
            self._validate_timer.stop()
        self.launch(request, self.generation)

    @work(thread=True, group="launch", exit_on_error=False)
    def launch(self, request: Request, generation: int) -> None:
        planned, outcome = _plan(request)
        if outcome.problems or request.local_errors:
            self.app.call_from_thread(self._launch_refused, request, outcome, generation)
            return
        from dmltui.executors.slurm import SlurmError
        from dmltui.launching import LaunchIncomplete, slurm_settings, start_runs

        try:
            records = start_runs(planned, gpus=request.gpus, tags=request.tags, slurm_settings=slurm_settings(request.on))
            error = None
        except SlurmError as problem:  # sbatch refused the job array (its one line says why); nothing was left behind
            records, error = [], str(problem)
        except LaunchIncomplete as problem:  # some started and go on; the rest were removed: both said
            records, error = problem.started, str(problem)
        except Exception as problem:  # a store or file-system problem: say so, keep the form
            records, error = [], f"{type(problem).__name__}: {problem}"
        self.app.call_from_thread(self._launched, records, error, request.on)

    def _launch_refused(self, request: Request, outcome: Outcome, generation: int) -> None:
        self.launching = False
        n = len(outcome.problems) + len(request.local_errors)
        self.app.notify(f"nothing started: {n} problem{'s' if n != 1 else ''} in the form", severity="error")
        if self.is_attached:
            self.validated_generation = self.generation = generation
            self.show_outcome(request, outcome)

    def _launched(self, records: list[dict[str, Any]], error: str | None, on: str) -> None:
        """Runs started (or not): said even when the screen was left meanwhile."""
        self.launching = False
        if error:
            self.app.notify(error, title="launch incomplete" if records else "launch failed", severity="error", timeout=10)
            if records:
                self.app.refresh_runs()
            if self.is_attached:
                self.update_count()
            return
        names = ", ".join(r["name"] for r in records[:3]) + (" …" if len(records) > 3 else "")
        where = " on SLURM" if on == "slurm" else ""
        self.app.notify(f"started {len(records)} run{'s' if len(records) != 1 else ''}{where}: {names}")
        self.app.refresh_runs()
        if self.is_current:
            self.dismiss()
