"""Search spaces: ``KEY=loguniform(1e-6,1e-3)`` texts parsed into Optuna distributions and checked against the
config schema before anything starts.

Forms: ``uniform(a,b)`` and ``loguniform(a,b)`` for float keys, ``int(a,b)`` and ``logint(a,b)`` for integer keys,
``choice(v1,v2,...)`` for any key (values as ``--set`` reads them: TOML literals, bare words as strings).
Keys the protocol owns (the dataset, the folds, the seed, the test switch) cannot be searched.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from engine.config.presets import ConfigError, parse_override

# Keys a search may not set: the tuning protocol decides them (folds, no test split) or the study does (dataset, seed).
PROTOCOL_KEYS = ("data.dataset", "data.folds", "data.fold", "data.use_tv_split", "data.tv_split_by_samples",
                 "data.tv_split_perc", "eval.test", "run.seed")
FORMS = {"uniform": "float", "loguniform": "float", "int": "int", "logint": "int", "choice": None}
_PARAM = re.compile(r"^\s*(?P<key>[^=\s]+)\s*=\s*(?P<form>[a-z]+)\((?P<args>.*)\)\s*$")


@dataclass(frozen=True)
class Param:
    """One searched key: its form and bounds or choices (choices typed as ``--set`` types them)."""

    key: str
    form: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()
    text: str = ""  # as the user wrote it

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.form == "choice":
            return CategoricalDistribution(self.choices)
        if FORMS[self.form] == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.form == "logint")
        return FloatDistribution(float(self.low), float(self.high), log=self.form == "loguniform")

    def edge_values(self) -> list[Any]:
        """The values whose configs must all be valid for every sampled value to be (bounds are inclusive)."""
        return list(self.choices) if self.form == "choice" else [self.low, self.high]


def toml_literal(value: Any) -> str:
    """A value as the right-hand side of a ``--set KEY=VALUE`` override (strings quoted, so 'true' stays a string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, list)):
        return json.dumps(value)
    return json.dumps(str(value))


def overrides_for(params: dict[str, Any]) -> list[str]:
    """Optuna's ``trial.params`` as overrides."""
    return [f"{key}={toml_literal(value)}" for key, value in params.items()]


def _number(text: str, key: str, kind: str) -> float | int:
    try:
        value = float(text) if kind == "float" else int(text)
    except ValueError:
        raise ConfigError(f"--space {key}: {text.strip()!r} is not {'a number' if kind == 'float' else 'an integer'}") from None
    if kind == "float" and not math.isfinite(value):
        raise ConfigError(f"--space {key}: bounds must be finite, got {text.strip()!r}")
    return value


def parse_param(text: str) -> Param:
    """One ``--space`` text; ConfigError (one line) when it is malformed. Keys are checked by :func:`check_space`."""
    match = _PARAM.match(text)
    if not match or match["form"] not in FORMS:
        raise ConfigError(f"--space {text!r}: expected KEY=FORM(...) with FORM one of {', '.join(f'{f}(...)' for f in FORMS)}, "
                          "e.g. optim.lr=loguniform(1e-6,1e-3)")
    key, form = match["key"], match["form"]
    if key in PROTOCOL_KEYS:
        raise ConfigError(f"--space {key}: set by the tuning protocol, not searchable ({', '.join(PROTOCOL_KEYS)})")
    args = [a.strip() for a in match["args"].split(",") if a.strip()]
    if form == "choice":
        if len(args) < 2:
            raise ConfigError(f"--space {key}: choice(...) needs at least two values, got {len(args)}")
        choices = tuple(parse_override(f"{key}={a}")[1] for a in args)
        if any(not isinstance(c, (bool, int, float, str)) for c in choices):
            raise ConfigError(f"--space {key}: choices must be numbers, words or true/false, got {match['args']!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"--space {key}: choice(...) lists a value twice")
        return Param(key, form, choices=choices, text=text.strip())
    if len(args) != 2:
        raise ConfigError(f"--space {key}: {form}(low,high) takes two bounds, got {len(args)}")
    kind = FORMS[form]
    low, high = (_number(a, key, kind) for a in args)
    if not low < high:
        raise ConfigError(f"--space {key}: {form}({args[0]},{args[1]}): the low bound must be below the high one")
    if form.startswith("log") and low <= 0:
        raise ConfigError(f"--space {key}: {form}(...) needs a positive low bound, got {args[0]}")
    return Param(key, form, low, high, text=text.strip())


def parse_space(texts: list[str]) -> list[Param]:
    if not texts:
        raise ConfigError("--space: give at least one KEY=FORM(...) to search, e.g. --space 'optim.lr=loguniform(1e-6,1e-3)'")
    params = [parse_param(text) for text in texts]
    keys = [p.key for p in params]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"--space {twice[0]}: searched twice")
    return params


def check_space(params: list[Param], resolve_with) -> None:
    """Check every key against the config schema and every bound/choice by resolving a config with it.

    *resolve_with(overrides)* resolves the study's preset with extra overrides and raises ConfigError. A key that is
    not in the schema, a form that does not fit its type, or a value the schema refuses gives one line naming both."""
    from dmltui.form_fields import field_specs

    specs = {spec.key: spec for spec in field_specs()}
    for param in params:
        spec = specs.get(param.key)
        if spec is None:
            close = difflib.get_close_matches(param.key, list(specs), n=1)
            raise ConfigError(f"--space {param.key}: not a config key{f' (did you mean {close[0]!r}?)' if close else ''}")
        wanted = FORMS[param.form]
        if wanted == "float" and spec.kind not in ("float", "int"):
            raise ConfigError(f"--space {param.key}: {param.form}(...) needs a number key; {param.key} is {spec.kind}")
        if wanted == "float" and spec.kind == "int":
            raise ConfigError(f"--space {param.key}: an integer key; use int(a,b) or logint(a,b) instead of {param.form}(...)")
        if wanted == "int" and spec.kind != "int":
            raise ConfigError(f"--space {param.key}: {param.form}(...) needs an integer key; {param.key} is {spec.kind}")
        for value in param.edge_values():
            try:
                resolve_with([f"{param.key}={toml_literal(value)}"])
            except ConfigError as error:
                raise ConfigError(f"--space {param.text}: {param.key}={toml_literal(value)} is refused: {error.lines[0]}") from None
