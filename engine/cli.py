"""``python -m engine``: start one training run.

Configuration, lowest precedence first: built-in defaults, presets (``--preset``,
repeatable, or ``--config FILE.toml``), flags of the original codebase
(``--loss margin --batch_mining distance ...``), then ``--set key=value`` overrides.
With ``--run-dir DIR`` holding a config.toml (what the run manager prepares), that
file is the configuration. Without ``--run-dir`` the run goes to
``<log.save_path>/<dataset>/<savename>`` like the original.

Before anything is written, :func:`engine.preflight.problems` checks what can be checked
cheaply (dataset layout, weights file, run directory, device); each problem is one
``error:`` line and nothing is created. A run that fails later keeps its traceback in
train.log and reports one ``error:`` line on the terminal.

Exit codes: 0 finished, 1 failed or diverged, 2 invalid configuration or a failed
pre-run check, 130 stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tomllib
from datetime import datetime
from pathlib import Path

from engine import preflight
from engine.config.legacy import LegacyFlagError, add_legacy_arguments, legacy_overrides
from engine.config.presets import ConfigError, ResolvedConfig, flatten, resolve, validate_tree
from engine.config.schema import Config
from engine.registry import did_you_mean
from engine.rundir import RunDir, now_iso

EXIT_CODES = {"finished": 0, "failed": 1, "diverged": 1, "stopped": 130}
_OWN_OPTIONS = ("preset", "config", "set", "run_dir", "print_config", "resume")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="Train a deep metric learning model (one run).",
        allow_abbrev=False,  # the original accepted prefixes; typos must fail here
    )
    own = parser.add_argument_group("configuration")
    own.add_argument("--preset", action="append", default=[], metavar="NAME", help="preset name or file; repeatable, later wins")
    own.add_argument("--config", action="append", default=[], metavar="FILE", help="a preset/config TOML file (same as --preset)")
    own.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. loss.margin.beta=0.6")
    own.add_argument("--run-dir", metavar="DIR", help="run directory (uses DIR/config.toml when it exists)")
    own.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    own.add_argument("--resume", action="store_true", help="continue the run in --run-dir from checkpoints/last.pt")
    add_legacy_arguments(parser)
    return parser


def _reject_unknown(parser: argparse.ArgumentParser, extras: list[str]) -> None:
    known = sorted(s for action in parser._actions for s in action.option_strings if s.startswith("--"))
    for token in extras:
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            raise ConfigError(f"unknown flag {flag}{did_you_mean(flag, known)}; see python -m engine --help")
        raise ConfigError(f"unexpected argument {token!r}: every value must follow a flag")


def default_run_dir(config: Config) -> Path:
    """The original's naming: <save_path>/<dataset>/<savename>, suffixed _1, _2... on collision."""
    if config.log.savename == "group_plus_seed":
        name = (
            f"{config.log.group}_s{config.run.seed}"
            if config.log.online
            else f"{config.data.dataset.upper()}_{config.model.arch}_{datetime.now():%Y-%m-%d-%H-%M-%S}"
        )
    else:
        name = config.log.savename
    base = Path(config.log.save_path) / config.data.dataset / name
    candidate, counter = base, 0
    while candidate.exists():
        counter += 1
        candidate = base.with_name(f"{base.name}_{counter}")
    return candidate


def resolve_from_args(args: argparse.Namespace) -> ResolvedConfig:
    legacy = {k: v for k, v in vars(args).items() if k not in _OWN_OPTIONS}
    overrides, warnings = legacy_overrides(legacy)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    resolved = resolve([*args.preset, *args.config], args.set, base=overrides, base_source="legacy flags")
    for warning in resolved.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return resolved


def _record_refusal(rd: RunDir, problems: list[str]) -> None:
    """A prepared run (state queued) that will not start says why in status.json: else the run manager,
    seeing its process gone, could only call it crashed."""
    if not rd.exists() or rd.read_status().get("state") != "queued":
        return
    with contextlib.suppress(OSError):  # the run directory may be one of the problems
        rd.update_status(state="failed", ended_at=now_iso(), error="; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        _reject_unknown(parser, extras)
        run_dir = Path(args.run_dir) if args.run_dir else None
        configured = any(getattr(args, k) for k in ("preset", "config", "set")) or any(
            k not in _OWN_OPTIONS for k in vars(args)
        )
        if run_dir is not None and RunDir(run_dir).exists():
            if configured:
                raise ConfigError(f"{run_dir / 'config.toml'} exists: it is the run's configuration; drop the other options")
            config_file = RunDir(run_dir).config
            with config_file.open("rb") as handle:
                tree = tomllib.load(handle)
            config = validate_tree(tree, dict.fromkeys(flatten(tree), str(config_file)))
        else:
            config = resolve_from_args(args).config
    except (ConfigError, LegacyFlagError) as error:
        for line in getattr(error, "lines", [str(error)]):
            print(f"error: {line}", file=sys.stderr)
        return 2
    except tomllib.TOMLDecodeError as error:
        print(f"error: {args.run_dir}/config.toml: not valid TOML: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        import tomli_w

        sys.stdout.write(tomli_w.dumps(config.to_dict()))
        return 0
    if args.resume and (run_dir is None or not RunDir(run_dir).exists()):
        print("error: --resume needs --run-dir DIR of an existing run (with config.toml)", file=sys.stderr)
        return 2
    found = preflight.problems(config, run_dir)
    for line in found:
        print(f"error: {line}", file=sys.stderr)
    if found:
        if run_dir is not None:
            _record_refusal(RunDir(run_dir), found)
        return 2
    from engine.trainer import ResumeError, run  # deferred: torch and friends load only when training

    run_dir = run_dir or default_run_dir(config)
    try:
        outcome = run(config, run_dir, resume=args.resume)
    except ResumeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if outcome.state == "failed":
        print(f"error: run failed: {outcome.error}; traceback in {RunDir(run_dir).log}", file=sys.stderr)
    return EXIT_CODES[outcome.state]
