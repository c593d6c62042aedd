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


def params_from_config(miner_config, name: str) -> dict[str, Any]:
    """The ``miner.<name>`` section as keyword arguments ({} for miners without parameters)."""
    section = getattr(miner_config, name, None)
    return section.model_dump() if section is not None else {}


from engine.miners import distance  # noqa: E402,F401  (registration)

__all__ = ["MINERS", "Miner", "Triplets", "create", "list_miners", "params_from_config"]
