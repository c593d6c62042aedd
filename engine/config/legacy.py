"""The original codebase's command-line flags, mapped onto the typed config.

The original is driven by argparse flags (``python main.py --loss margin --bs 112 ...``).
Every one of its flags is accepted here, so a line of its runs file starts a run once
``python main.py`` is replaced by ``python -m engine``. One table, :data:`LEGACY_FLAGS`,
drives everything: the argparse arguments (:func:`add_legacy_arguments`), the mapping
onto dotted config keys (:func:`legacy_overrides`), the strict parser
(:func:`parse_legacy_argv`) and the runs-file converter (:func:`convert_runs_file`).

Mapping rules
-------------
Plain renames (the full list is the table below):

* ``--bs`` → ``sampler.batch_size``, ``--kernels`` → ``data.workers``, ``--n_epochs`` →
  ``optim.epochs``, ``--decay`` → ``optim.weight_decay``, ``--optim`` → ``optim.name``,
  ``--batch_mining`` → ``miner.name``, ``--data_sampler`` → ``sampler.name``,
  ``--gpu`` → ``run.gpus``, ``--source_path`` (alias ``--source``) → ``data.source_path``,
  ``--log_online`` → ``log.online``, ``--evaluate_on_gpu`` → ``eval.on_gpu``,
  ``--evaluation_metrics`` → ``eval.metrics``.
* ``--loss_<loss>_<param>`` → ``loss.<loss>.<param>`` and ``--miner_<miner>_<param>`` →
  ``miner.<miner>.<param>``, split at the loss/miner name (``--loss_angular_npair_l2`` →
  ``loss.angular.npair_l2``, ``--miner_rho_distance_cp`` → ``miner.rho_distance.cp``,
  ``--loss_softtriplet_lambda`` → ``loss.softtriplet.lambda``, the schema's alias).
* Every batch-creation flag ``--data_<x>`` → ``sampler.<x>``; ``--data_sampler_lowproj_dim``
  → ``sampler.lowproj_dim``. The flags the original declared but never used
  (``--data_sim_measure``, ``--data_mb_lr``, ``--data_gc_coreset_lim``,
  ``--data_idx_full_prec``, ``--data_mb_mom``) map to their ``sampler.*`` homes anyway.
* ``--miner_parametric_mode / _n_support / _support_lim`` were read by the original but
  never declared; they are accepted here (``_support_lim`` takes two floats, LOW HIGH).

Inverted or re-encoded flags (the table's ``convert`` column):

* ``--not_pretrained`` → ``model.pretrained = false``.
* ``--no_train_metrics`` → ``eval.train_metrics = false``. The original ignored the flag
  and always evaluated on the training set; we honour it, with a warning saying so.
* ``--fc_lr``: negative (the original's "off", default -1) → no override (``optim.fc_lr``
  stays None: the head uses ``--lr``); positive → ``optim.fc_lr``. ``--fc_lr 0`` (a
  frozen embedding head in the original) has no equivalent, since ``optim.fc_lr`` must be
  > 0, and is an error rather than a silently different experiment.
* ``--scheduler``: the original honoured only ``none``; every other value built the same
  MultiStepLR. ``none`` → ``optim.scheduler = "none"``, anything else → ``"step"``
  (a value other than ``step`` also gives a warning).
* ``--loss_margin_beta_constant`` → ``loss.margin.beta_constant = true``.
* ``--miner_distance_upper_cutoff`` / ``--miner_rho_distance_upper_cutoff``: dead in the
  original (the cut-off line was commented out); we apply them, with a warning.
* ``--wandb_key`` has no config home and never reaches the overrides. A value other than
  the original's placeholder ``<your_api_key_here>`` gives a warning: W&B keys are read
  from ``WANDB_API_KEY`` or netrc only. The key itself is never echoed.

Fixed in dmltui, so an explicit value now takes effect where the original crashed:
``--loss_margin_nu`` > 0 and ``--loss_softtriplet_lrmulti`` (the original read a
misspelled attribute). These map without a warning.

Runs files (:func:`convert_runs_file`)
--------------------------------------
* Backslash-continued lines are joined; blank lines and comment lines are skipped; inline
  ``# ...`` comments are dropped. A command is ``python main.py ...`` (also ``python3``,
  ``pythonX.Y``, an interpreter path, ``python -u main.py``, ``some/dir/main.py``) or
  ``python -m engine ...``; anything before it (``cd x &&``, ``VAR=1``, ``nohup``) is
  ignored, and its arguments end at the first shell operator (``;``, ``&&``, ``|``, ``>``
  ...). Nothing is executed and nothing is expanded: ``$datapath`` stays a literal string.
* Per-machine flags are dropped from presets (the table's ``machine`` column): ``--gpu``,
  ``--source_path``/``--source`` and ``--save_path``; ``--wandb_key`` is never written.
  ``--kernels`` (``data.workers``) is kept: it is a data-loading setting of the run (the
  paper's runs all use 6, the default) that a launch on a smaller machine may override.
  ``--log_online``, ``--project``, ``--group`` and ``--savename`` are kept: they say
  where the run's results go, not which machine runs it.
* Lines whose overrides differ only by ``--seed`` become one preset with the list of seeds
  (first-appearance order, duplicates dropped with a warning). A line without ``--seed``
  gets the schema's default seed. ``run.seed`` is not part of ``overrides``.
* Preset name: ``--group`` lowercased, with ``_``, blanks and other characters outside
  ``[a-z0-9.-]`` turned into ``-``; without a group ``<loss>-<miner>-<dataset>`` (defaults
  filled in from the schema). Clashing names get ``-2``, ``-3``, ...
* A stray positional argument (the original file has ``--group CUBreg_SNR_Distance _3``)
  gives a warning naming the line and is skipped; the rest of the line converts.
* A line that cannot be converted (unknown flag, bad value, unbalanced quote) gives a
  warning naming its line number in the returned list's ``warnings`` attribute; only when
  no command converts at all is :class:`LegacyFlagError` raised.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.registry import did_you_mean

__all__ = [
    "LEGACY_FLAGS",
    "LegacyFlag",
    "LegacyFlagError",
    "LegacyPreset",
    "ConvertedPresets",
    "add_legacy_arguments",
    "legacy_overrides",
    "parse_legacy_argv",
    "convert_runs_file",
    "flag_by_name",
]

WANDB_KEY_PLACEHOLDER = "<your_api_key_here>"
DEST_PREFIX = "legacy:"  # argparse dests of the legacy flags; cannot clash with any other flag's dest
ARGUMENT_GROUP_TITLE = "legacy flags of the original codebase"


class LegacyFlagError(ValueError):
    """A legacy flag that is unknown, misspelled, mistyped or has no equivalent."""


class _Omit:
    """Sentinel returned by a converter when the flag sets nothing."""

    def __repr__(self) -> str:
        return "OMIT"


OMIT = _Omit()

Converter = Callable[[Any], "tuple[Any, list[str]]"]


@dataclass(frozen=True)
class LegacyFlag:
    """One flag of the original ``parameters.py`` (or read by its code) and its config home."""

    flag: str  # e.g. "--loss_margin_beta"
    key: str | None  # dotted config key, e.g. "loss.margin.beta"; None: no config home
    type: Callable[[str], Any] | None = None  # argparse type (None for store_true)
    nargs: str | int | None = None  # "+" for lists, 2 for a pair
    action: str | None = None  # "store_true" or None (store)
    convert: Converter | None = None  # value -> (config value or OMIT, warnings); may raise LegacyFlagError
    aliases: tuple[str, ...] = ()  # further option strings, e.g. ("--source",)
    machine: bool = False  # per-machine setting: dropped from presets made from runs files
    note: str = ""  # shown in --help after the key

    @property
    def name(self) -> str:
        """The flag without its dashes, e.g. ``loss_margin_beta`` (the original's attribute)."""
        return self.flag.lstrip("-")

    @property
    def dest(self) -> str:
        """The argparse dest used by :func:`add_legacy_arguments`."""
        return DEST_PREFIX + self.name

    @property
    def option_strings(self) -> tuple[str, ...]:
        return (self.flag, *self.aliases)


# ----------------------------------------------------------------------- converters


def _to_false(value: Any) -> tuple[Any, list[str]]:
    return False, []


def _no_train_metrics(value: Any) -> tuple[Any, list[str]]:
    return False, [
        "--no_train_metrics: the original ignored this flag and always evaluated on the training set; "
        "dmltui honours it (eval.train_metrics = false)"
    ]


def _fc_lr(value: Any) -> tuple[Any, list[str]]:
    if value < 0:
        return OMIT, []
    if value == 0:
        raise LegacyFlagError(
            "--fc_lr 0 (a frozen embedding head in the original) has no equivalent: optim.fc_lr must be > 0; "
            "pass a negative value or omit the flag to use --lr for the head"
        )
    return value, []


def _scheduler(value: Any) -> tuple[Any, list[str]]:
    if value == "none":
        return "none", []
    if value == "step":
        return "step", []
    return "step", [
        f"--scheduler {value}: the original honoured only 'none' and built a step schedule (MultiStepLR) "
        "for every other value; mapped to optim.scheduler = 'step'"
    ]


def _upper_cutoff(flag: str) -> Converter:
    def convert(value: Any) -> tuple[Any, list[str]]:
        return value, [
            f"{flag} {value}: the original ignored this flag (its cut-off was commented out); "
            f"dmltui applies it: negatives farther than {value} get weight 0"
        ]

    return convert


def _wandb_key(value: Any) -> tuple[Any, list[str]]:
    if value == WANDB_KEY_PLACEHOLDER:
        return OMIT, []
    return OMIT, [
        "--wandb_key: the value was discarded; W&B keys are read only from the WANDB_API_KEY "
        "environment variable or netrc, never from flags or configs"
    ]


# --------------------------------------------------------------------------- the table


def _store(flag: str, key: str, typ: Callable[[str], Any] = str, **kw: Any) -> LegacyFlag:
    return LegacyFlag(flag, key, type=typ, **kw)


def _switch(flag: str, key: str, **kw: Any) -> LegacyFlag:
    return LegacyFlag(flag, key, action="store_true", **kw)


def _list(flag: str, key: str, typ: Callable[[str], Any] = str, **kw: Any) -> LegacyFlag:
    return LegacyFlag(flag, key, type=typ, nargs="+", **kw)


LEGACY_FLAGS: tuple[LegacyFlag, ...] = (
    # --- basic training parameters
    _store("--dataset", "data.dataset"),
    _switch("--use_tv_split", "data.use_tv_split"),
    _switch("--tv_split_by_samples", "data.tv_split_by_samples"),
    _store("--tv_split_perc", "data.tv_split_perc", float),
    _store("--augmentation", "data.augmentation"),
    _store("--lr", "optim.lr", float),
    _store("--fc_lr", "optim.fc_lr", float, convert=_fc_lr, note="negative: same as --lr; 0 is an error"),
    _store("--decay", "optim.weight_decay", float),
    _store("--n_epochs", "optim.epochs", int),
    _store("--kernels", "data.workers", int),
    _store("--bs", "sampler.batch_size", int),
    _store("--seed", "run.seed", int),
    _store("--scheduler", "optim.scheduler", convert=_scheduler, note="'none' or anything else: step"),
    _store("--gamma", "optim.gamma", float),
    _list("--tau", "optim.tau", int),
    _store("--optim", "optim.name"),
    _store("--loss", "loss.name"),
    _store("--batch_mining", "miner.name"),
    _store("--embed_dim", "model.embed_dim", int),
    _switch("--not_pretrained", "model.pretrained", convert=_to_false, note="sets it to false"),
    _store("--arch", "model.arch"),
    _switch("--no_train_metrics", "eval.train_metrics", convert=_no_train_metrics, note="sets it to false"),
    _switch("--evaluate_on_gpu", "eval.on_gpu"),
    _list("--evaluation_metrics", "eval.metrics"),
    _list("--storage_metrics", "eval.storage_metrics"),
    _list("--evaltypes", "eval.evaltypes"),
    _list("--gpu", "run.gpus", int, machine=True),
    _store("--savename", "log.savename"),
    _store("--source_path", "data.source_path", aliases=("--source",), machine=True),
    _store("--save_path", "log.save_path", machine=True),
    # --- wandb parameters
    _switch("--log_online", "log.online"),
    LegacyFlag(
        "--wandb_key", None, type=str, convert=_wandb_key, machine=True,
        note="accepted and discarded: keys come from WANDB_API_KEY or netrc",
    ),
    _store("--project", "log.project"),
    _store("--group", "log.group"),
    # --- loss-specific parameters
    _store("--loss_contrastive_pos_margin", "loss.contrastive.pos_margin", float),
    _store("--loss_contrastive_neg_margin", "loss.contrastive.neg_margin", float),
    _store("--loss_triplet_margin", "loss.triplet.margin", float),
    _store("--loss_margin_margin", "loss.margin.margin", float),
    _store("--loss_margin_beta_lr", "loss.margin.beta_lr", float),
    _store("--loss_margin_beta", "loss.margin.beta", float),
    _store("--loss_margin_nu", "loss.margin.nu", float),
    _switch("--loss_margin_beta_constant", "loss.margin.beta_constant"),
    _store("--loss_proxynca_lrmulti", "loss.proxynca.lrmulti", float),
    _store("--loss_npair_l2", "loss.npair.l2", float),
    _store("--loss_angular_alpha", "loss.angular.alpha", float),
    _store("--loss_angular_npair_ang_weight", "loss.angular.npair_ang_weight", float),
    _store("--loss_angular_npair_l2", "loss.angular.npair_l2", float),
    _store("--loss_multisimilarity_pos_weight", "loss.multisimilarity.pos_weight", float),
    _store("--loss_multisimilarity_neg_weight", "loss.multisimilarity.neg_weight", float),
    _store("--loss_multisimilarity_margin", "loss.multisimilarity.margin", float),
    _store("--loss_multisimilarity_thresh", "loss.multisimilarity.thresh", float),
    _store("--loss_lifted_neg_margin", "loss.lifted.neg_margin", float),
    _store("--loss_lifted_l2", "loss.lifted.l2", float),
    _store("--loss_quadruplet_margin_alpha_1", "loss.quadruplet.margin_alpha_1", float),
    _store("--loss_quadruplet_margin_alpha_2", "loss.quadruplet.margin_alpha_2", float),
    _store("--loss_softtriplet_n_centroids", "loss.softtriplet.n_centroids", int),
    _store("--loss_softtriplet_margin_delta", "loss.softtriplet.margin_delta", float),
    _store("--loss_softtriplet_gamma", "loss.softtriplet.gamma", float),
    _store("--loss_softtriplet_lambda", "loss.softtriplet.lambda", float),
    _store("--loss_softtriplet_reg_weight", "loss.softtriplet.reg_weight", float),
    _store("--loss_softtriplet_lrmulti", "loss.softtriplet.lrmulti", float),
    _store("--loss_softmax_lr", "loss.softmax.lr", float),
    _store("--loss_softmax_temperature", "loss.softmax.temperature", float),
    _store("--loss_histogram_nbins", "loss.histogram.nbins", int),
    _store("--loss_snr_margin", "loss.snr.margin", float),
    _store("--loss_snr_reg_lambda", "loss.snr.reg_lambda", float),
    _store("--loss_arcface_lr", "loss.arcface.lr", float),
    _store("--loss_arcface_angular_margin", "loss.arcface.angular_margin", float),
    _store("--loss_arcface_feature_scale", "loss.arcface.feature_scale", float),
    # --- batch-mining parameters (the parametric ones were read by the original, never declared)
    _store("--miner_distance_lower_cutoff", "miner.distance.lower_cutoff", float),
    _store(
        "--miner_distance_upper_cutoff", "miner.distance.upper_cutoff", float,
        convert=_upper_cutoff("--miner_distance_upper_cutoff"), note="dead in the original, applied here",
    ),
    _store("--miner_rho_distance_lower_cutoff", "miner.rho_distance.lower_cutoff", float),
    _store(
        "--miner_rho_distance_upper_cutoff", "miner.rho_distance.upper_cutoff", float,
        convert=_upper_cutoff("--miner_rho_distance_upper_cutoff"), note="dead in the original, applied here",
    ),
    _store("--miner_rho_distance_cp", "miner.rho_distance.cp", float),
    _store("--miner_parametric_mode", "miner.parametric.mode"),
    _store("--miner_parametric_n_support", "miner.parametric.n_support", int),
    LegacyFlag("--miner_parametric_support_lim", "miner.parametric.support_lim", type=float, nargs=2),
    # --- batch-creation parameters
    _store("--data_sampler", "sampler.name"),
    _store("--samples_per_class", "sampler.samples_per_class", int),
    _store("--data_batchmatch_bigbs", "sampler.batchmatch_bigbs", int),
    _store("--data_batchmatch_ncomps", "sampler.batchmatch_ncomps", int),
    _switch("--data_storage_no_update", "sampler.storage_no_update"),
    _store("--data_d2_coreset_lambda", "sampler.d2_coreset_lambda", float),
    _store("--data_gc_coreset_lim", "sampler.gc_coreset_lim", float),
    _store("--data_sampler_lowproj_dim", "sampler.lowproj_dim", int),
    _store("--data_sim_measure", "sampler.sim_measure"),
    _switch("--data_gc_softened", "sampler.gc_softened"),
    _switch("--data_idx_full_prec", "sampler.idx_full_prec"),
    _store("--data_mb_mom", "sampler.mb_mom", float),
    _store("--data_mb_lr", "sampler.mb_lr", float),
)

_BY_OPTION: dict[str, LegacyFlag] = {opt: f for f in LEGACY_FLAGS for opt in f.option_strings}
_BY_NAME: dict[str, LegacyFlag] = {opt.lstrip("-"): f for opt, f in _BY_OPTION.items()}
_BY_DEST: dict[str, LegacyFlag] = {f.dest: f for f in LEGACY_FLAGS}
KNOWN_OPTIONS: tuple[str, ...] = tuple(_BY_OPTION)


def flag_by_name(name: str) -> LegacyFlag:
    """The table entry for ``--bs``, ``bs``, an alias such as ``--source``, or a dest."""
    entry = _BY_OPTION.get(name) or _BY_NAME.get(name) or _BY_DEST.get(name)
    if entry is None:
        shown = name if name.startswith("-") else f"--{name}"
        raise LegacyFlagError(f"unknown flag {shown}{did_you_mean(shown, KNOWN_OPTIONS)}")
    return entry


# ------------------------------------------------------------------------- argparse


def _metavar(entry: LegacyFlag) -> str | tuple[str, ...] | None:
    if entry.action:
        return None
    if entry.nargs == 2:
        return ("LOW", "HIGH")
    return {int: "INT", float: "FLOAT"}.get(entry.type, "STR")  # type: ignore[arg-type]


def add_legacy_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every legacy flag to *parser*, in its own argument group, defaulting to SUPPRESS.

    Only the flags actually given appear in the parsed namespace (under the dest
    ``legacy:<name>``); pass the namespace to :func:`legacy_overrides`. Build the parser
    with ``allow_abbrev=False`` so abbreviations are errors, as everywhere in dmltui.
    """
    group = parser.add_argument_group(
        ARGUMENT_GROUP_TITLE,
        "Accepted for compatibility with the original main.py; each sets the config key shown.",
    )
    for entry in LEGACY_FLAGS:
        shown = entry.key or "no config key"
        kwargs: dict[str, Any] = {
            "dest": entry.dest,
            "default": argparse.SUPPRESS,
            "help": f"→ {shown}" + (f" ({entry.note})" if entry.note else ""),
        }
        if entry.action:
            kwargs["action"] = entry.action
        else:
            kwargs["type"] = entry.type
            kwargs["metavar"] = _metavar(entry)
            if entry.nargs is not None:
                kwargs["nargs"] = entry.nargs
        group.add_argument(*entry.option_strings, **kwargs)


class _RaisingParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise LegacyFlagError instead of exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise LegacyFlagError(message)


def _legacy_parser() -> argparse.ArgumentParser:
    parser = _RaisingParser(prog="main.py", allow_abbrev=False, add_help=False)
    add_legacy_arguments(parser)
    return parser


def _split_extras(extras: list[str], tokens: list[str]) -> tuple[list[str], list[str]]:
    """Unknown flags (with did-you-mean) and stray positionals (with context) among *extras*."""
    unknown: list[str] = []
    stray: list[str] = []
    after_unknown = False
    for token in extras:
        if token.startswith("-") and len(token) > 1 and not _is_number(token):
            flag = token.split("=", 1)[0]
            unknown.append(f"unknown flag {flag}{did_you_mean(flag, KNOWN_OPTIONS)}")
            after_unknown = True
        elif not after_unknown:  # a value following an unknown flag is not reported separately
            stray.append(f"stray argument {token!r}{_context(token, tokens)}")
    return unknown, stray


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _context(token: str, tokens: list[str]) -> str:
    try:
        i = tokens.index(token)
    except ValueError:
        return ""
    before = tokens[max(0, i - 2) : i]
    return f" (after {' '.join(before)})" if before else ""


def parse_legacy_argv(argv: list[str]) -> tuple[dict, list[str]]:
    """Parse original-style flags strictly and return ``legacy_overrides`` of them.

    Unknown or abbreviated flags and positional arguments raise :class:`LegacyFlagError`
    with a one-line message (did-you-mean included when a flag is close to a known one).
    """
    argv = list(argv)
    namespace, extras = _legacy_parser().parse_known_args(argv)
    unknown, stray = _split_extras(extras, argv)
    if unknown:
        raise LegacyFlagError("; ".join(unknown))
    if stray:
        raise LegacyFlagError("; ".join(stray) + ": the original's flags take no positional arguments")
    return legacy_overrides(namespace)


# -------------------------------------------------------------------------- mapping


def _given(namespace_or_dict: Any) -> list[tuple[LegacyFlag, Any]]:
    """(entry, value) for each legacy flag present, in table order."""
    if isinstance(namespace_or_dict, argparse.Namespace):
        items: Mapping[str, Any] = {k: v for k, v in vars(namespace_or_dict).items() if k.startswith(DEST_PREFIX)}
    elif isinstance(namespace_or_dict, Mapping):
        items = namespace_or_dict
        if any(str(k).startswith(DEST_PREFIX) for k in items):  # vars() of a namespace: other keys are not ours
            items = {k: v for k, v in items.items() if str(k).startswith(DEST_PREFIX)}
    else:
        raise TypeError(f"expected an argparse.Namespace or a mapping, not {type(namespace_or_dict).__name__}")
    found: dict[LegacyFlag, Any] = {}
    for raw_key, value in items.items():
        entry = flag_by_name(str(raw_key))  # unknown keys raise, with did-you-mean
        if entry in found:
            raise LegacyFlagError(f"{entry.flag} given twice (as {raw_key!r} and another spelling)")
        found[entry] = value
    return [(entry, found[entry]) for entry in LEGACY_FLAGS if entry in found]


def _coerce(entry: LegacyFlag, value: Any) -> Any:
    """Apply the flag's argparse type to string values given through a dict."""
    if entry.action or entry.type in (None, str):
        return value
    try:
        if isinstance(value, str):
            return entry.type(value)
        if isinstance(value, (list, tuple)):
            return [entry.type(v) if isinstance(v, str) else v for v in value]
    except ValueError:
        raise LegacyFlagError(f"{entry.flag}: invalid {entry.type.__name__} value {value!r}") from None
    return value


def _set_dotted(target: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = target
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def legacy_overrides(namespace_or_dict: Any) -> tuple[dict, list[str]]:
    """Nested config overrides and warnings for the legacy flags that were given.

    Accepts the namespace parsed by a parser set up with :func:`add_legacy_arguments`
    (only its ``legacy:*`` attributes are read), or a mapping whose keys are flags
    (``"--bs"``), bare names (``"bs"``) or those dests. Values of a mapping may be strings;
    they are converted with the flag's type. Deep-merge the result onto a config dict
    (:func:`engine.config.presets.deep_merge`) and validate it with the schema.
    """
    overrides: dict = {}
    warnings: list[str] = []
    for entry, value in _given(namespace_or_dict):
        if entry.action == "store_true" and not value:
            continue  # a switch given as false in a mapping: the flag was not set
        value = _coerce(entry, value)
        if entry.nargs is not None and isinstance(value, tuple):
            value = list(value)
        if entry.convert is not None:
            value, notes = entry.convert(value)
            warnings.extend(n for n in notes if n not in warnings)
        if value is OMIT or entry.key is None:
            continue
        _set_dotted(overrides, entry.key, value)
    return overrides, warnings


def _drop_dotted(target: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    chain = [target]
    for part in parents:
        node = chain[-1].get(part)
        if not isinstance(node, dict):
            return
        chain.append(node)
    chain[-1].pop(leaf, None)
    for part, parent in zip(reversed(parents), reversed(chain[:-1]), strict=True):  # prune emptied sections
        if parent[part]:
            break
        del parent[part]


# ------------------------------------------------------------------------ runs files


@dataclass
class LegacyPreset:
    """Runs of a runs file that differ only by their seed."""

    name: str
    overrides: dict
    seeds: list[int]
    source_lines: list[int]
    warnings: list[str] = field(default_factory=list)


class ConvertedPresets(list):
    """The presets of a runs file (a list) plus ``warnings`` about lines that did not convert."""

    def __init__(self, presets: list[LegacyPreset] = (), warnings: list[str] | None = None):
        super().__init__(presets)
        self.warnings: list[str] = list(warnings or [])


_PYTHON = re.compile(r"^python(\d+(\.\d+)*)?$")
_INTERPRETER_SWITCH = re.compile(r"^-[BEIOPSbdqsuvx]+$")
_SHELL_OPERATORS = frozenset(";&|<>()")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, joined text) for each command line; comments and blanks skipped."""
    out: list[tuple[int, str]] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not buffer:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = number
        elif line.lstrip().startswith("#"):  # a comment inside a continuation ends nothing; skip it
            continue
        if line.endswith("\\"):
            buffer.append(line[:-1])
            continue
        buffer.append(line)
        out.append((start, " ".join(buffer)))
        buffer = []
    if buffer:
        out.append((start, " ".join(buffer)))
    return out


def _shell_clean(line: str) -> str:
    """*line* without its trailing comment and without the fd digits of redirections (``2>&1``).

    Done by hand because shlex loses what the shell knows: a ``#`` starts a comment only at
    the start of an unquoted word, and ``2>`` is a redirection while ``2 >`` is an argument.
    """
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(line):
        c = line[i]
        word_start = i == 0 or line[i - 1].isspace()
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"' and i + 1 < len(line):
                out.append(c)
                i += 1
                c = line[i]
        elif c in "'\"":
            quote = c
        elif c == "\\" and i + 1 < len(line):
            out.append(c)
            i += 1
            c = line[i]
        elif c == "#" and word_start:
            break
        elif c.isdigit() and word_start:
            j = i
            while j < len(line) and line[j].isdigit():
                j += 1
            if j < len(line) and line[j] in "<>":
                i = j
                continue
        out.append(c)
        i += 1
    return "".join(out)


def _tokenise(line: str) -> list[str]:
    lexer = shlex.shlex(_shell_clean(line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def _is_operator(token: str) -> bool:
    return bool(token) and all(c in _SHELL_OPERATORS for c in token)


def _commands(tokens: list[str]) -> list[list[str]]:
    """The argument lists of every ``python main.py`` / ``python -m engine`` in *tokens*."""
    found: list[list[str]] = []
    i = 0
    while i < len(tokens):
        if not _PYTHON.match(tokens[i].rsplit("/", 1)[-1]):
            i += 1
            continue
        j = i + 1
        while j < len(tokens) and _INTERPRETER_SWITCH.match(tokens[j]):
            j += 1
        if j < len(tokens) and tokens[j].rsplit("/", 1)[-1] == "main.py":
            j += 1
        elif tokens[j : j + 2] == ["-m", "engine"]:
            j += 2
        else:
            i += 1
            continue
        args: list[str] = []
        k = j
        while k < len(tokens):
            token = tokens[k]
            if _is_operator(token) and ("<" in token or ">" in token):
                k += 2  # a redirection and its target; the arguments go on after it
                continue
            if _is_operator(token):  # ; && || | & ( ): the command ends
                break
            args.append(token)
            k += 1
        found.append(args)
        i = k
    return found


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")
    return slug


def _default_name(overrides: dict) -> str:
    from engine.config.schema import DataConfig, LossConfig, MinerConfig

    loss = overrides.get("loss", {}).get("name", LossConfig.model_fields["name"].default)
    miner = overrides.get("miner", {}).get("name", MinerConfig.model_fields["name"].default)
    dataset = overrides.get("data", {}).get("dataset", DataConfig.model_fields["dataset"].default)
    return _slug(f"{loss}-{miner}-{dataset}")


def _default_seed() -> int:
    from engine.config.schema import RunConfig

    return RunConfig.model_fields["seed"].default


def _render(messages: dict[str, list[int]]) -> list[str]:
    rendered = []
    for message, lines in messages.items():
        label = f"line {lines[0]}" if len(lines) == 1 else "lines " + ", ".join(map(str, lines))
        rendered.append(f"{label}: {message}")
    return rendered


def _convert_command(args: list[str]) -> tuple[dict, int | None, list[str]]:
    """(overrides without machine flags or seed, seed or None, warnings) of one command."""
    namespace, extras = _legacy_parser().parse_known_args(args)
    unknown, stray = _split_extras(extras, args)
    if unknown:
        raise LegacyFlagError("; ".join(unknown))
    overrides, warnings = legacy_overrides(namespace)
    notes = [f"{s} skipped (the original's argparse rejected it)" for s in stray]
    for entry in LEGACY_FLAGS:
        if entry.machine and entry.key:
            _drop_dotted(overrides, entry.key)
    seed = overrides.get("run", {}).get("seed")
    _drop_dotted(overrides, "run.seed")
    return overrides, seed, notes + warnings


def convert_runs_file(text: str) -> ConvertedPresets:
    """Presets from a shell script of original-style commands (see the module docstring).

    Nothing is executed. Returns a list of :class:`LegacyPreset`; its ``warnings``
    attribute names the lines that could not be converted. Raises
    :class:`LegacyFlagError` when no command converts.
    """
    groups: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    commands = 0
    for number, line in _logical_lines(text):
        try:
            tokens = _tokenise(line)
        except ValueError as exc:  # e.g. an unbalanced quote
            if re.search(r"python[\d.]*\s", line):
                commands += 1
                failures.append(f"line {number}: cannot tokenise ({exc})")
            continue
        for args in _commands(tokens):
            commands += 1
            try:
                overrides, seed, notes = _convert_command(args)
            except LegacyFlagError as exc:
                failures.append(f"line {number}: {exc}")
                continue
            key = json.dumps(overrides, sort_keys=True)
            group = groups.setdefault(
                key, {"overrides": overrides, "seeds": [], "lines": [], "seed_lines": {}, "messages": {}}
            )
            seed = _default_seed() if seed is None else seed
            group["lines"].append(number)
            group["seed_lines"].setdefault(seed, []).append(number)
            if seed not in group["seeds"]:
                group["seeds"].append(seed)
            for note in notes:
                group["messages"].setdefault(note, []).append(number)
    if commands == 0:
        raise LegacyFlagError("no `python main.py ...` or `python -m engine ...` command found")
    if not groups:
        raise LegacyFlagError("no command converted: " + "; ".join(failures))

    presets = ConvertedPresets(warnings=failures)
    taken: set[str] = set()
    for group in groups.values():
        overrides = group["overrides"]
        given = overrides.get("log", {}).get("group")
        base = (_slug(given) if given else "") or _default_name(overrides)
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        messages = dict(group["messages"])
        for seed, lines in group["seed_lines"].items():
            if len(lines) > 1:
                messages[f"seed {seed} given more than once; kept once"] = lines
        presets.append(
            LegacyPreset(
                name=name,
                overrides=overrides,
                seeds=list(group["seeds"]),
                source_lines=list(group["lines"]),
                warnings=_render(messages),
            )
        )
    return presets
