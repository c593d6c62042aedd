"""The names a config may use, known without importing torch.

Validating a config checks its dataset, augmentation, loss, miner, sampler and backbone names against the
engine's registries, and those live in modules that import torch (seconds on a cold start). The run manager
validates configs all the time: every ``dmltui run``, every preset the TUI's new-run form resolves. So the
built-in names are also written to ``catalog.json`` beside this module, and the checks here read that file
while the registries' modules are not loaded, and the live registries once they are. Nothing is lost that
way: registering a name of one's own (``@LOSSES.register`` in a notebook) imports the registry's module
first, so its names count. ``tests/test_catalog.py`` fails when the file and the registries differ;
``python -m engine.catalog`` rewrites it.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import timm_hub
from engine.io import atomic_write_text
from engine.registry import REGISTRY_MODULES, UnknownNameError, by_kind, did_you_mean

CATALOG_FILE = Path(__file__).with_name("catalog.json")
KINDS = ("dataset", "augmentation", "loss", "miner", "sampler", "architecture")
MODIFIERS = ("frozen", "normalize", "double", "he")  # architecture suffixes, e.g. resnet50_frozen_normalize


def build() -> dict[str, Any]:
    """The catalog from the live registries (imports them: torch): names per kind, and what feeds what."""
    losses, miners = by_kind("loss"), by_kind("miner")
    return {
        **{kind: by_kind(kind).names() for kind in KINDS},
        # which losses take a miner, and which tuple structures: a config pairing them wrongly is refused
        "loss_miner_outputs": {name: list(cls.MINER_OUTPUTS) if cls.REQUIRES_MINER else None for name, cls in losses.items()},
        "miner_output": {name: cls.OUTPUT for name, cls in miners.items()},
        # the losses that a cross-batch memory (loss.xbm) can feed: tuple losses and pair losses with references
        "memory_losses": [name for name, cls in losses.items() if cls.accepts_memory()],
    }


def _live(kind: str) -> bool:
    return REGISTRY_MODULES[kind][0] in sys.modules


@functools.cache
def _stored() -> dict[str, Any]:
    return json.loads(CATALOG_FILE.read_text())


def names(kind: str) -> list[str]:
    """The registered names of *kind*: from the live registry when its module is loaded, else from catalog.json."""
    return by_kind(kind).names() if _live(kind) else list(_stored()[kind])


def check_name(kind: str, name: str) -> str:
    """*name* when *kind* has it; a ValueError naming what is allowed otherwise."""
    known = names(kind)
    if name not in known:
        raise ValueError(str(UnknownNameError(kind, name, known)))
    return name


def _loss_miner_outputs(loss: str) -> list[str] | None:
    """The miner outputs a loss takes (None: it takes no miner); KeyError (UnknownNameError) for an unknown loss."""
    if _live("loss"):
        cls = by_kind("loss").get(loss)
        return list(cls.MINER_OUTPUTS) if cls.REQUIRES_MINER else None
    outputs = _stored()["loss_miner_outputs"]
    if loss not in outputs:
        raise UnknownNameError("loss", loss, sorted(outputs))
    return outputs[loss]


def _miner_outputs() -> dict[str, str]:
    if _live("miner"):
        return {name: cls.OUTPUT for name, cls in by_kind("miner").items()}
    return dict(_stored()["miner_output"])


def uses_miner(loss: str) -> bool:
    """Whether the loss takes its tuples from a miner (the others ignore miner.name)."""
    return _loss_miner_outputs(loss) is not None


def check_miner(loss: str, miner: str) -> None:
    """ValueError when the loss cannot use the miner's tuples (names both and what is allowed)."""
    accepted = _loss_miner_outputs(loss)
    if accepted is None:
        return
    outputs = _miner_outputs()
    if outputs.get(miner) not in accepted:
        allowed = [name for name, output in outputs.items() if output in accepted]
        raise ValueError(f"miner.name={miner!r} cannot feed loss.name={loss!r}; allowed miners: {', '.join(allowed)}")


def memory_losses() -> list[str]:
    """The losses that ``loss.xbm`` can feed (tuple losses, and pair losses that compare against references)."""
    if _live("loss"):
        return [name for name, cls in by_kind("loss").items() if cls.accepts_memory()]
    return list(_stored()["memory_losses"])


def memory_error(loss: str) -> str:
    """The one-line refusal of ``loss.xbm`` for a loss that cannot use a cross-batch memory."""
    return f"loss.xbm cannot feed loss.name={loss!r} (no pairs to extend); allowed losses: {', '.join(memory_losses())}"


def check_memory(loss: str) -> None:
    """ValueError when ``loss.xbm`` is enabled with a loss that cannot use a cross-batch memory."""
    if loss not in memory_losses():
        raise ValueError(memory_error(loss))


@dataclass(frozen=True)
class ArchSpec:
    """A parsed ``model.arch``: the backbone and its modifiers."""

    backbone: str
    modifiers: frozenset[str]


def _parse_timm_arch(arch: str) -> ArchSpec:
    """``timm:<timm model name>`` followed by modifiers (no timm name ends in a modifier's word)."""
    tokens = arch[len(timm_hub.PREFIX) :].split("_")
    cut = len(tokens)
    while cut > 1 and tokens[cut - 1] in MODIFIERS:
        cut -= 1
    name = "_".join(tokens[:cut])
    try:
        timm_hub.resolve(name)
    except timm_hub.TimmNameError as error:
        raise ValueError(str(error)) from None
    return ArchSpec(timm_hub.PREFIX + name, frozenset(tokens[cut:]))


def parse_arch(arch: str) -> ArchSpec:
    """Split ``resnet50_frozen_normalize`` into backbone and modifiers; ValueError naming what is allowed."""
    if arch.startswith(timm_hub.PREFIX):
        return _parse_timm_arch(arch)
    known = names("architecture")
    backbone = next((n for n in sorted(known, key=len, reverse=True) if arch == n or arch.startswith(n + "_")), None)
    if backbone is None:
        head = arch.split("_")[0]
        raise ValueError(
            f"unknown architecture {arch!r}{did_you_mean(head, known)}; allowed: "
            f"{', '.join(known)} or {timm_hub.PREFIX}<any timm model name>, followed by modifiers _{', _'.join(MODIFIERS)}"
        )
    tokens = [t for t in arch[len(backbone) :].split("_") if t]
    unknown = [t for t in tokens if t not in MODIFIERS]
    if unknown:
        raise ValueError(
            f"unknown modifier {unknown[0]!r} in architecture {arch!r}{did_you_mean(unknown[0], MODIFIERS)}; "
            f"allowed modifiers: {', '.join(MODIFIERS)}"
        )
    return ArchSpec(backbone, frozenset(tokens))


def write() -> Path:
    """Rewrite catalog.json from the live registries."""
    for module, _ in REGISTRY_MODULES.values():
        importlib.import_module(module)
    atomic_write_text(CATALOG_FILE, json.dumps(build(), indent=1, sort_keys=True) + "\n")
    _stored.cache_clear()
    if timm_hub.installed_version():
        timm_hub.write()
    return CATALOG_FILE


if __name__ == "__main__":
    print(f"wrote {write()}")
