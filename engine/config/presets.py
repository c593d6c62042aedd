"""Presets: composable TOML files that resolve into a validated :class:`Config`.

A preset file holds config sections plus three optional top-level keys::

    description = "Margin loss, beta 1.2, distance-weighted mining"
    extends = ["base", "cub200"]     # resolved in order; later entries win, the file itself wins last
    seeds = [0, 1, 2, 3, 4]          # the seeds a launcher runs by default

    [loss]
    name = "margin"

    [datasets.cub200.miner.rho_distance]   # applies only when the resolved dataset is cub200
    cp = 0.35

Order of application: presets (extends first, then each file), then the ``datasets.<name>``
tables of the resolved dataset (the most specific values: a method's tuning for one
dataset), then legacy flags, then ``--set``.
Overrides (``--set loss.margin.beta=0.6``) apply on top; values are TOML literals
(``0.6``, ``true``, ``[1, 2]``, ``"text"``), and a bare word is taken as a string.
Every error is one line naming the source (file or ``--set``), the dotted key, the
bad value and what is allowed, with a did-you-mean for misspelt keys and names.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ValidationError

from engine import catalog
from engine.config.schema import Config, DataConfig
from engine.registry import did_you_mean

META_KEYS = ("description", "extends", "seeds", "datasets")
OVERRIDE_SOURCE = "--set"
DEFAULT_SOURCE = "defaults"


class ConfigError(ValueError):
    """Invalid preset or override. ``lines`` holds one self-contained line per problem."""

    def __init__(self, lines: list[str] | str):
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))


class PresetNotFound(ConfigError):
    """No preset of that name or path."""


def bundled_presets_dir() -> Path:
    """The presets shipped with the project (the checkout's presets/ or the installed copy)."""
    checkout = Path(__file__).resolve().parents[2] / "presets"
    return checkout if checkout.is_dir() else Path(__file__).resolve().parents[1] / "_bundled_presets"


def default_search_path(extra: list[Path] | None = None) -> list[Path]:
    """$DMLTUI_PRESETS entries, then *extra* (e.g. the user's preset folder), then the bundled presets."""
    env = [Path(p).expanduser() for p in os.environ.get("DMLTUI_PRESETS", "").split(os.pathsep) if p]
    return [*env, *(extra or []), bundled_presets_dir()]


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass
class PresetLibrary:
    """Finds presets by name along a search path (earlier folders shadow later ones)."""

    search_path: list[Path] = field(default_factory=default_search_path)

    def names(self) -> list[str]:
        found = {p.stem for folder in self.search_path if folder.is_dir() for p in folder.glob("*.toml")}
        return sorted(found)

    def find(self, name: str, relative_to: Path | None = None) -> Path:
        if name.endswith(".toml") or os.sep in name or "/" in name:
            path = Path(name).expanduser()
            if not path.is_absolute() and relative_to is not None and (relative_to / path).is_file():
                path = relative_to / path
            if not path.is_file():
                raise PresetNotFound(f"preset file {name} does not exist")
            return path
        folders = ([relative_to] if relative_to else []) + self.search_path
        for folder in folders:
            candidate = folder / f"{name}.toml"
            if candidate.is_file():
                return candidate
        raise PresetNotFound(
            f"unknown preset {name!r}{did_you_mean(name, self.names())}; available: {', '.join(self.names()) or 'none'}"
        )

    def read(self, path: Path) -> dict[str, Any]:
        try:
            with path.open("rb") as handle:
                return tomllib.load(handle)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{display_path(path)}: not valid TOML: {error}") from None
        except OSError as error:
            raise ConfigError(f"{display_path(path)}: cannot read: {error.strerror}") from None


@dataclass
class ResolvedConfig:
    """A validated config plus where each value came from."""

    config: Config
    chain: list[str]  # preset files in the order they were applied
    sources: dict[str, str]  # dotted key -> file or '--set' that set it last
    description: str = ""
    seeds: list[int] | None = None
    preset: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.config.to_dict())


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive merge; tables merge, every other value (lists included) replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """``loss.margin.beta=0.6`` -> ('loss.margin.beta', 0.6); TOML literal, bare words as strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{OVERRIDE_SOURCE} {text!r}: expected KEY=VALUE with a dotted key, e.g. loss.margin.beta=0.6")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def nest(dotted: str, value: Any) -> dict[str, Any]:
    tree: dict[str, Any] = value
    for part in reversed(dotted.split(".")):
        tree = {part: tree}
    return tree


class _Composer:
    def __init__(self, library: PresetLibrary):
        self.library = library
        self.chain: list[str] = []
        self.sources: dict[str, str] = {}
        self.conditional: list[tuple[str, dict[str, Any], str]] = []  # (dataset, tree, source)

    def layer(self, tree: dict[str, Any], source: str) -> None:
        for key in flatten(tree):
            self.sources.pop(key, None)
            self.sources[key] = source  # re-inserted last: dict order = order of application

    def load(self, name: str, relative_to: Path | None, stack: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
        path = self.library.find(name, relative_to).resolve()
        if path in stack:
            cycle = " -> ".join(display_path(p) for p in (*stack, path))
            raise ConfigError(f"{display_path(path)}: extends forms a cycle: {cycle}")
        raw = self.library.read(path)
        shown = display_path(path)
        unknown = [k for k in raw if k not in META_KEYS and k not in Config.model_fields]
        if unknown:
            allowed = [*META_KEYS, *Config.model_fields]
            raise ConfigError(
                f"{shown}: unknown top-level key {unknown[0]!r}{did_you_mean(unknown[0], allowed)}; allowed: {', '.join(allowed)}"
            )
        extends = raw.get("extends", [])
        if isinstance(extends, str):
            extends = [extends]
        if not isinstance(extends, list) or not all(isinstance(e, str) for e in extends):
            raise ConfigError(f"{shown}: extends = {extends!r}: expected a list of preset names")
        seeds = raw.get("seeds")
        if seeds is not None and (not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds)):
            raise ConfigError(f"{shown}: seeds = {seeds!r}: expected a list of integers")
        if "description" in raw and not isinstance(raw["description"], str):
            raise ConfigError(f"{shown}: description = {raw['description']!r}: expected a string")
        conditional = self._dataset_tables(raw.get("datasets", {}), shown)
        tree: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for parent in extends:
            parent_tree, parent_meta = self.load(parent, path.parent, (*stack, path))
            tree = deep_merge(tree, parent_tree)
            meta.update(parent_meta)
        own = {k: v for k, v in raw.items() if k not in META_KEYS}
        self.layer(own, shown)
        self.chain.append(shown)
        self.conditional.extend(conditional)
        meta.update({k: raw[k] for k in ("description", "seeds") if k in raw})
        return deep_merge(tree, own), meta

    @staticmethod
    def _dataset_tables(tables: Any, shown: str) -> list[tuple[str, dict[str, Any], str]]:
        from engine import data

        if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
            raise ConfigError(f"{shown}: datasets = {tables!r}: expected tables [datasets.<dataset>.<section>]")
        known = data.list_datasets()
        for name in tables:
            if name not in known:
                raise ConfigError(
                    f"{shown}: datasets.{name}: unknown dataset {name!r}{did_you_mean(name, known)}; allowed: {', '.join(known)}"
                )
        return [(name, tree, f"{shown} [datasets.{name}]") for name, tree in tables.items()]


def resolve(
    presets: str | list[str] | None = None,
    overrides: list[str] | None = None,
    *,
    library: PresetLibrary | None = None,
    base: dict[str, Any] | None = None,
    base_source: str = DEFAULT_SOURCE,
) -> ResolvedConfig:
    """Compose presets (in order), then *base* extras (e.g. legacy flags), then ``--set`` overrides; validate."""
    library = library or PresetLibrary()
    names = [presets] if isinstance(presets, str) else list(presets or [])
    composer = _Composer(library)
    tree: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    for name in names:
        layer_tree, layer_meta = composer.load(name, None, ())
        tree = deep_merge(tree, layer_tree)
        meta.update(layer_meta)
    updates = [(key, nest(key, value)) for key, value in map(parse_override, overrides or [])]
    final = deep_merge(tree, base or {})
    for _, update in updates:
        final = deep_merge(final, update)
    data_section = final.get("data")
    dataset = (data_section.get("dataset") if isinstance(data_section, dict) else None) or DataConfig().dataset
    for table_dataset, table, source in composer.conditional:
        if table_dataset == dataset:
            composer.layer(table, source)
            tree = deep_merge(tree, table)
    if base:
        composer.layer(base, base_source)
        tree = deep_merge(tree, base)
    for key, update in updates:
        composer.layer(update, f"{OVERRIDE_SOURCE} {key}")
        tree = deep_merge(tree, update)
    config = validate_tree(tree, composer.sources)
    return ResolvedConfig(
        warnings=config_warnings(config, composer.sources),
        config=config,
        chain=composer.chain,
        sources=composer.sources,
        description=meta.get("description", ""),
        seeds=meta.get("seeds"),
        preset=names[-1] if names else None,
    )


def config_warnings(config: Config, sources: dict[str, str]) -> list[str]:
    """Valid but probably unintended settings (one line each)."""
    warnings = []
    if "miner.name" in sources and not catalog.uses_miner(config.loss.name):
        warnings.append(
            f"{sources['miner.name']}: miner.name={config.miner.name!r} is ignored: loss {config.loss.name!r} does not use a miner"
        )
    return warnings


def validate_tree(tree: dict[str, Any], sources: dict[str, str] | None = None) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, tree, sources or {})) from None


def _source_for(loc: str, sources: dict[str, str]) -> str:
    if loc in sources:
        return sources[loc]
    for key in reversed(sources):  # the last layer that touched anything under loc
        if key.startswith(loc + ".") or loc.startswith(key + ".") or not loc:
            return sources[key]
    return DEFAULT_SOURCE


def _lookup(tree: dict[str, Any], parts: tuple) -> Any:
    node: Any = tree
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _model_at(parts: tuple) -> type[BaseModel] | None:
    model: Any = Config
    for part in parts:
        field_info = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field_info is None:
            aliases = {f.alias: f for f in model.model_fields.values() if f.alias} if isinstance(model, type) else {}
            field_info = aliases.get(part)
        if field_info is None:
            return None
        model = field_info.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def describe_validation_error(error: ValidationError, tree: dict[str, Any], sources: dict[str, str]) -> list[str]:
    lines = []
    for item in error.errors():
        parts = tuple(str(p) for p in item["loc"] if not isinstance(p, int))
        dotted = ".".join(parts)
        source = _source_for(dotted, sources)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            section = _model_at(parts[:-1])
            allowed = [f.alias or n for n, f in section.model_fields.items()] if section else []
            lines.append(
                f"{source}: unknown key {dotted}{did_you_mean(parts[-1], allowed)}; "
                f"allowed under {'.'.join(parts[:-1]) or 'the top level'}: {', '.join(allowed)}"
            )
            continue
        value = _lookup(tree, parts)
        if item["type"] in ("model_type", "dict_type") and not isinstance(value, dict):
            lines.append(f"{source}: {dotted} = {value!r}: expected a table of settings, not a single value")
        elif parts and value is not None and not isinstance(value, dict):
            lines.append(f"{source}: {dotted} = {value!r}: {message}")
        else:
            lines.append(f"{source}: {dotted or 'config'}: {message}")
    return lines


def write_preset(path: Path, tree: dict[str, Any], *, description: str = "", extends: list[str] | None = None,
                 seeds: list[int] | None = None) -> None:
    """Write a preset file atomically (meta keys first, then sections)."""
    from engine.io import atomic_write_text

    document: dict[str, Any] = {}
    if description:
        document["description"] = description
    if extends:
        document["extends"] = extends
    if seeds:
        document["seeds"] = seeds
    document.update(tree)
    atomic_write_text(path, tomli_w.dumps(document))
