"""Batch miners, looked up by name: ``create(name, **params)``, ``list_miners()``.

Config: ``miner.name`` picks the miner, ``miner.<name>.<param>`` holds its parameters.
"""

from __future__ import annotations

from typing import Any

from engine.miners.base import Miner, Triplets
from engine.registry import Registry

MINERS: Registry[type[Miner]] = Registry("miner")


def create(name: str, **params: Any) -> Miner:
    return MINERS.get(name)(**params)


def list_miners() -> list[str]:
    return MINERS.names()


def from_config(config) -> Miner:
    """The miner of a full :class:`~engine.config.schema.Config` (``miner.name`` + its section)."""
    return MINERS.get(config.miner.name).from_config(config)


def _register_builtin() -> None:
    """Import every module of this package: each registers its miner by name."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_register_builtin()

__all__ = ["MINERS", "Miner", "Triplets", "create", "from_config", "list_miners"]
