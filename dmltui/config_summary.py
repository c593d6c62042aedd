"""A run's config as its store summary keeps it: flattened to dotted keys, as its differences from a frozen reference.

The store keeps summaries only (a run's full config is its run directory's config.toml), yet a query such as
``runs list --where 'config.optim.lr < 1e-4'`` reads a config value of every stored run, and reading 10,000
config files would take seconds. So each summary holds ``config_changes``: the run's config flattened
(``{"optim": {"lr": 1e-05}}`` -> ``{"optim.lr": 1e-05}``; lists stay lists) where it differs from
``config_reference.json``, and ``None`` for a reference key the run's config lacks. A run differs from the
reference in a handful of keys: a few hundred bytes per summary, where its whole flattened config is 4 KB, and
the summaries stay self-contained (no other file is needed to read them).

``config_reference.json`` is the flattened default config of the day this format began, and it is frozen:
stored summaries are read against it, so editing it would silently change every stored run's values (a key
the engine adds later is simply a change of each run that has it). ``db rebuild`` recomputes every summary's
changes from the run directories' config.toml files.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

REFERENCE_FILE = Path(__file__).with_name("config_reference.json")


@functools.cache
def reference() -> dict[str, Any]:
    """The frozen flattened config that ``config_changes`` are relative to."""
    return json.loads(REFERENCE_FILE.read_text())


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys: ``{"loss": {"margin": {"beta": 1.2}}}`` -> ``{"loss.margin.beta": 1.2}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _same(value: Any, other: Any) -> bool:
    """Equal and of the same type (``1`` is not ``1.0`` nor ``True`` in a config), lists element by element."""
    if isinstance(value, list) and isinstance(other, list):
        return len(value) == len(other) and all(map(_same, value, other))
    return type(value) is type(other) and value == other


def config_changes(config: dict[str, Any]) -> dict[str, Any]:
    """The summary's ``config_changes`` of a resolved config (nested, as config.toml holds it)."""
    base = reference()
    flat = flatten(config)
    changes = {key: value for key, value in flat.items() if key not in base or not _same(value, base[key])}
    changes.update({key: None for key in base if key not in flat})
    return changes

