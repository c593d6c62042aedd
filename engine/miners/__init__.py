"""Batch miners, looked up by name: ``create(name, **params)``, ``list_miners()``.

Config: ``miner.name`` picks the miner, ``miner.<name>.<param>`` holds its parameters.
"""

from __future__ import annotations

from typing import Any

from engine.miners.base import Miner, Triplets
from engine.registry import Registry, import_package_modules

MINERS: Registry[type[Miner]] = Registry("miner")


def create(name: str, **params: Any) -> Miner:
    return MINERS.get(name)(**params)


def list_miners() -> list[str]:
    return MINERS.names()


def from_config(config) -> Miner:
    """The miner of a full :class:`~engine.config.schema.Config` (``miner.name`` + its section)."""
    return MINERS.get(config.miner.name).from_config(config)


import_package_modules(__name__, __path__)  # each module registers its miner by name

__all__ = ["MINERS", "Miner", "Triplets", "create", "from_config", "list_miners"]
