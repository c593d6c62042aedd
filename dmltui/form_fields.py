"""The new-run form without widgets: fields from the config's JSON schema, overrides from edits, errors to fields.

The TUI's new-run screen builds one input per :class:`FieldSpec` (from ``engine.config.schema.json_schema()``),
fills it with the preset's resolved value, and turns every input whose value differs from that into a
``--set``-style override (``key=<TOML literal>``) for :func:`dmltui.launching.plan_runs`: the same
validation, the same error lines and the same runs as ``dmltui run``/``dmltui sweep``.
:func:`error_key` sends each error line back to the field it names.

Plain functions, no Textual: unit-tested on their own. Nothing here imports the engine at module
level (pydantic and the registries are imported by the functions that need them, in a worker).
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from dmltui.imports import ENGINE_IMPORT

# dotted key -> the registry its value is a name in (the form offers the registry's names)
REGISTRY_FIELDS = {
    "data.dataset": "dataset",
    "data.augmentation": "augmentation",
    "model.arch": "architecture",
    "loss.name": "loss",
    "miner.name": "miner",
    "sampler.name": "sampler",
}
# keys set by the launch controls rather than the form (plan_runs sets run.seed per seed)
LAUNCH_KEYS = {"run.seed": "seeds"}
# sections whose sub-tables are the parameters of one named part: loss.<loss name>.*, miner.<miner name>.*
NAMED_PARTS = {"loss": "loss.name", "miner": "miner.name"}
# architecture modifiers offered in the backbone list (any other combination can still come from a preset)
ARCH_SUFFIXES = ("", "_normalize", "_frozen", "_frozen_normalize")


@dataclass(frozen=True)
class FieldSpec:
    """One leaf of the config: how to edit it and what it accepts."""

    key: str  # dotted, aliases used (loss.softtriplet.lambda)
    kind: str  # int, float, bool, str, choice, list
    default: Any = None
    description: str = ""
    nullable: bool = False  # None allowed (an empty input)
    choices: tuple[str, ...] = ()  # choice: the allowed names (enum values or a registry's names)
    registry: str | None = None  # choice fields whose names come from an engine registry
    item_kind: str | None = None  # list: int, float or str
    length: int | None = None  # list of fixed length (a tuple)
    bounds: str = ""  # e.g. ">= 1", "> 0, < 1"

    @property
    def section(self) -> str:
        return self.key.split(".")[0]

    @property
    def label(self) -> str:
        """The key within its section (``margin.beta`` on the loss tab)."""
        return self.key.partition(".")[2]

    @property
    def part(self) -> str | None:
        """For loss.<name>.x and miner.<name>.x: the loss or miner the parameter belongs to."""
        parts = self.key.split(".")
        return parts[1] if parts[0] in NAMED_PARTS and len(parts) == 3 else None

    @property
    def type_text(self) -> str:
        """Short type description for help lines: ``int >= 1 or empty``."""
        if self.kind == "list":
            text = f"list of {self.item_kind or 'str'}" + (f" ({self.length} items)" if self.length else "")
        elif self.kind == "choice":
            text = "one of the listed names"
        else:
            text = self.kind
        if self.bounds:
            text += f" {self.bounds}"
        if self.nullable:
            text += ", empty for the default"
        return text


# --------------------------------------------------------------------------- schema -> fields

_JSON_KINDS = {"integer": "int", "number": "float", "boolean": "bool", "string": "str"}


def _resolve_ref(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if not ref:
        return node
    target: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def _bounds(node: dict[str, Any]) -> str:
    parts = []
    for name, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if name in node:
            parts.append(f"{sign} {node[name]}")
    return ", ".join(parts)


def _scalar_kind(node: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    if "enum" in node:
        return "choice", tuple(str(v) for v in node["enum"])
    if "const" in node:
        return "choice", (str(node["const"]),)
    return _JSON_KINDS.get(node.get("type", "string"), "str"), ()


def _leaf(key: str, node: dict[str, Any], description: str, default: Any) -> FieldSpec:
    nullable = False
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(node["anyOf"])
        node = options[0] if len(options) == 1 else {"type": "string"}
    registry = REGISTRY_FIELDS.get(key)
    if node.get("type") == "array":
        items = node.get("prefixItems") or [node.get("items", {})]
        item_kind, item_choices = _scalar_kind(items[0])
        length = len(node["prefixItems"]) if "prefixItems" in node else None
        return FieldSpec(key, "list", default, description, nullable, item_choices,
                         item_kind="str" if item_kind == "choice" else item_kind, length=length, bounds=_bounds(node))
    kind, choices = _scalar_kind(node)
    if registry:
        kind = "choice"
    return FieldSpec(key, kind, default, description, nullable, choices, registry, bounds=_bounds(node))


def field_specs(schema: dict[str, Any] | None = None, choices: dict[str, list[str]] | None = None) -> list[FieldSpec]:
    """Every leaf of the config schema, in schema order; *choices* (see :func:`registry_choices`) fills registry fields."""
    if schema is None:
        with ENGINE_IMPORT:
            from engine.config.schema import json_schema

        schema = json_schema()
    specs: list[FieldSpec] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        node = _resolve_ref(schema, node)
        for name, prop in node.get("properties", {}).items():
            key = f"{prefix}{name}"
            target = _resolve_ref(schema, prop)
            if target.get("type") == "object" or "properties" in target:
                walk(target, key + ".")
            else:
                spec = _leaf(key, target if "$ref" in prop else prop, prop.get("description", ""), prop.get("default"))
                if spec.registry and choices and spec.registry in choices:
                    spec = FieldSpec(**{**spec.__dict__, "choices": tuple(choices[spec.registry])})
                specs.append(spec)

    walk(schema, "")
    return specs


def registry_choices() -> dict[str, list[str]]:
    """The names each registry offers, from engine.catalog: no torch, so the form is ready at once."""
    from engine import catalog

    found = {kind: catalog.names(kind) for kind in ("dataset", "augmentation", "loss", "miner", "sampler")}
    found["architecture"] = [f"{backbone}{suffix}" for backbone in catalog.names("architecture") for suffix in ARCH_SUFFIXES]
    return found


def options_for(spec: FieldSpec, current: Any = None) -> list[str]:
    """The names a choice field offers: its choices, plus the current value if a preset set something else."""
    options = list(spec.choices)
    if current is not None and str(current) not in options:
        options.insert(0, str(current))
    return options


def visible(spec: FieldSpec, names: dict[str, str]) -> bool:
    """Parameters of a loss or miner are shown only while that loss or miner is chosen (*names*: key -> value)."""
    part = spec.part
    if part is None:
        return True
    chosen = names.get(NAMED_PARTS[spec.section])
    return chosen is None or part == chosen


# --------------------------------------------------------------------------- values <-> text

def _number_text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def display_value(spec: FieldSpec, value: Any) -> str | bool:
    """The value as the form shows it: a bool for switches, text for everything else (lists comma-separated)."""
    if spec.kind == "bool":
        return bool(value)
    if value is None:
        return ""
    if spec.kind == "list":
        return ", ".join(_number_text(v) for v in value)
    return _number_text(value)


def _parse_scalar(kind: str, text: str) -> Any:
    text = text.strip()
    if kind == "int":
        return int(text)
    if kind == "float":
        value = float(text)
        if math.isnan(value):
            raise ValueError(text)
        return value
    if not text and kind == "choice":
        raise ValueError("empty")
    return text


def parse_value(spec: FieldSpec, raw: str | bool) -> Any:
    """What an input holds, typed; ValueError when the text is not of the field's type."""
    if spec.kind == "bool":
        if isinstance(raw, bool):
            return raw
        raise ValueError(f"{raw!r} is not a switch value")
    text = str(raw).strip()
    if not text and spec.nullable:
        return None
    if spec.kind == "list":
        items = [part.strip() for part in text.split(",") if part.strip()]
        return [_parse_scalar(spec.item_kind or "str", item) for item in items]
    return _parse_scalar(spec.kind, text)


_BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_@.\-]*")


def toml_literal(value: Any, *, bare_words: bool = False) -> str:
    """A TOML literal that ``--set`` parses back to *value* (bools, numbers, strings, flat lists).

    With *bare_words*, a plain word goes unquoted (``loss.name=triplet``): ``--set`` reads a bare word as a string."""
    if bare_words and isinstance(value, str) and _BARE_WORD.fullmatch(value) and value not in ("true", "false", "inf", "nan"):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "inf" if value == math.inf else "-inf" if value == -math.inf else repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def is_changed(spec: FieldSpec, raw: str | bool, baseline: Any) -> bool:
    """Does the input differ from the preset's resolved value? Text that does not parse counts as changed."""
    try:
        return not same_value(parse_value(spec, raw), baseline)
    except ValueError:
        return True


def override_for(spec: FieldSpec, raw: str | bool) -> str:
    """``key=literal``. Text that is not of the field's type goes as typed: the validator then names the problem."""
    try:
        value = parse_value(spec, raw)
    except ValueError:
        return f"{spec.key}={str(raw).strip()}"
    return f"{spec.key}={toml_literal(value, bare_words=True)}"


@dataclass
class FormOverrides:
    overrides: list[str] = field(default_factory=list)  # --set strings, in field order
    changed: list[str] = field(default_factory=list)  # keys of the overridden fields
    errors: dict[str, str] = field(default_factory=dict)  # key -> problem found before validation


def form_overrides(specs: list[FieldSpec], values: dict[str, str | bool], baseline: dict[str, Any]) -> FormOverrides:
    """Overrides for the fields whose value differs from the preset's (*baseline*: flat key -> resolved value)."""
    result = FormOverrides()
    for spec in specs:
        if spec.key not in values or not is_changed(spec, values[spec.key], baseline.get(spec.key)):
            continue
        result.changed.append(spec.key)
        raw = values[spec.key]
        if spec.nullable and not isinstance(raw, bool) and not str(raw).strip():
            result.errors[spec.key] = "empty: an override cannot unset a value the preset sets; type a value"
            continue
        result.overrides.append(override_for(spec, raw))
    return result


def flat_config(config_dict: dict[str, Any]) -> dict[str, Any]:
    """``Config.to_dict()`` flattened to dotted keys (the form's baseline)."""
    flat: dict[str, Any] = {}
    for key, value in config_dict.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in flat_config(value).items()})
        else:
            flat[key] = value
    return flat


# --------------------------------------------------------------------------- error lines -> fields

def error_key(line: str, keys: list[str] | set[str]) -> str | None:
    """The field an error line names (the first dotted key in it), or None for problems of the whole config."""
    best: tuple[int, str] | None = None
    for key in keys:
        match = re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", line)
        if match and (best is None or match.start() < best[0] or (match.start() == best[0] and len(key) > len(best[1]))):
            best = (match.start(), key)
    return best[1] if best else None


def error_message(line: str, key: str | None) -> str:
    """The part of an error line worth repeating under its field: without the source and the key."""
    _source, sep, rest = line.partition(": ")
    text = rest if sep else line
    if key:
        for prefix in (f"{key} = ", f"{key}: ", f"{key}="):
            if text.startswith(prefix):
                return text[len(prefix):]
    return text


# --------------------------------------------------------------------------- launch controls

def grid_lines(text: str) -> list[str]:
    """One sweep axis per line (blank lines and # comments ignored)."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def split_tags(text: str) -> list[str]:
    return [tag for tag in re.split(r"[,\s]+", text) if tag]


def run_count(seeds: str, default_seeds: list[int] | None, grid: list[str]) -> int:
    """How many runs plan_runs will start: grid product x seeds; ValueError from a bad seed list or grid line."""
    from dmltui.launching import parse_grid, parse_seeds

    n_seeds = len(parse_seeds(seeds)) if seeds.strip() else len(default_seeds or [0])
    product = 1
    for _key, values in parse_grid(grid):
        product *= len(values)
    return product * n_seeds


def cli_command(presets: list[str], overrides: list[str], *, seeds: str = "", gpus: str = "auto", name: str = "",
                tags: list[str] = (), grid: list[str] = (), on: str = "local") -> str:
    """The ``dmltui run``/``dmltui sweep`` command line that starts the same runs (*gpus* is for this machine only)."""
    words = ["dmltui", "sweep" if grid else "run", *presets]
    for line in grid:
        words += ["--grid", line]
    for override in overrides:
        words += ["--set", override]
    if seeds.strip():
        words += ["--seeds", seeds.strip()]
    if on != "local":
        words += ["--on", on]
    elif gpus.strip() and gpus.strip() != "auto":
        words += ["--gpus", gpus.strip()]
    if name.strip() and not grid:
        words += ["--name", name.strip()]
    for tag in tags:
        words += ["--tag", tag]
    return shlex.join(words)
