"""Name → factory registries (timm-style): configs only ever need a name.

Every pluggable part of the engine (datasets, architectures, losses, miners,
samplers, metrics) is looked up by name in a :class:`Registry`. Registering a new
module makes it usable from presets, the legacy flags and the CLI at once.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def did_you_mean(value: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ' (did you mean X?)' when *value* is close to one of *choices*, else ''."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def import_package_modules(package: str, path: list[str]) -> None:
    """Import every public module of a package (not ``base``, not ``_private``): each registers itself by name."""
    for module in pkgutil.iter_modules(path):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")


class UnknownNameError(KeyError):
    """A name that no entry of a registry carries; the message lists what is allowed."""

    def __init__(self, kind: str, name: str, allowed: list[str]):
        self.kind, self.name, self.allowed = kind, name, allowed
        super().__init__(
            f"unknown {kind} {name!r}{did_you_mean(name, allowed)}; allowed: {', '.join(allowed)}"
        )

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class Registry(Generic[T]):
    """A case-sensitive mapping of names to entries (classes or factory functions)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return decorator

    def unregister(self, name: str) -> None:
        """Remove an entry (for notebooks and tests that register temporary ones)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self, pattern: str | None = None) -> list[str]:
        names = sorted(self._entries)
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def items(self) -> list[tuple[str, Any]]:
        return sorted(self._entries.items())


# The registry of each kind of part that configs name, by the module that defines it (imported on first use: the
# modules import torch; engine.catalog knows their names without them).
REGISTRY_MODULES = {
    "dataset": ("engine.data", "DATASETS"),
    "augmentation": ("engine.data.transforms", "AUGMENTATIONS"),
    "loss": ("engine.losses", "LOSSES"),
    "miner": ("engine.miners", "MINERS"),
    "sampler": ("engine.samplers", "SAMPLERS"),
    "architecture": ("engine.models", "ARCHITECTURES"),
}


def by_kind(kind: str) -> Registry:
    """The registry of *kind* (a key of REGISTRY_MODULES: "dataset", "loss", "architecture"...)."""
    module_name, attribute = REGISTRY_MODULES[kind]
    return getattr(importlib.import_module(module_name), attribute)
