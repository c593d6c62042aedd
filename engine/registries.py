"""One place that maps a kind of pluggable part to its registry (used by config validation)."""

from __future__ import annotations

import importlib

from engine.registry import Registry

_REGISTRIES = {
    "dataset": ("engine.data", "DATASETS"),
    "augmentation": ("engine.data.transforms", "AUGMENTATIONS"),
    "loss": ("engine.losses", "LOSSES"),
    "miner": ("engine.miners", "MINERS"),
    "sampler": ("engine.samplers", "SAMPLERS"),
}


def by_kind(kind: str) -> Registry:
    module_name, attribute = _REGISTRIES[kind]
    return getattr(importlib.import_module(module_name), attribute)
