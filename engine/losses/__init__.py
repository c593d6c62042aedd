"""DML losses, looked up by name.

Public API (stable)::

    loss = engine.losses.create("margin", num_classes=C, embed_dim=D, miner=engine.miners.create("distance"), beta=0.6)
    value = loss(embeddings, labels)      # scalar tensor
    engine.losses.list_losses()           # the names the config accepts

Config: ``loss.name`` picks the loss, ``loss.<name>.<param>`` holds its parameters.
"""

from __future__ import annotations

from typing import Any

from engine.losses.base import DMLLoss
from engine.miners import Miner
from engine.registry import Registry, import_package_modules

LOSSES: Registry[type[DMLLoss]] = Registry("loss")


def create(name: str, *, num_classes: int, embed_dim: int, miner: Miner | None = None, **params: Any) -> DMLLoss:
    return LOSSES.get(name)(num_classes, embed_dim, miner, **params)


def list_losses() -> list[str]:
    return LOSSES.names()


def from_config(config, num_classes: int) -> DMLLoss:
    """The loss of a full :class:`~engine.config.schema.Config`, with its miner when it uses one, wrapped in a
    cross-batch memory when ``loss.xbm.enabled``."""
    from engine import miners

    loss_cls = LOSSES.get(config.loss.name)
    miner = miners.from_config(config) if loss_cls.REQUIRES_MINER else None
    loss = loss_cls.from_config(config, num_classes, miner)
    memory = config.loss.xbm
    if not memory.enabled:
        return loss
    from engine.losses.xbm import CrossBatchMemory

    return CrossBatchMemory(loss, size=memory.size, start_iteration=memory.start_iteration, weight=memory.weight)


import_package_modules(__name__, __path__)  # each module registers its loss by name

__all__ = ["LOSSES", "DMLLoss", "create", "from_config", "list_losses"]
