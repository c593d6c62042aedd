"""timm model names, and where their pretrained weights live, known without importing torch or timm.

``model.arch = "timm:<name>"`` accepts any model of the installed timm: an architecture
(``convnext_tiny``, its default pretrained tag) or an architecture with a pretrained tag
(``vit_small_patch16_224.dino``). Importing timm takes seconds, and configs are validated all the
time (every preset the run manager resolves), so ``python -m engine.catalog`` also writes the
names of the installed timm to ``timm_models.json`` beside this module, with the version they come
from. The checks here read that file while it matches the installed timm, and ask timm itself
otherwise.

Pretrained weights come from the Hugging Face hub (``timm/<name>``, cached under
``$HF_HOME/hub``) or, for a few models, from a URL (cached under ``$TORCH_HOME/hub/checkpoints``).
:func:`cached_weights` tells whether a model's weights are in those caches, and :func:`fetch_hint`
says, in one line, what to download where a run cannot.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from engine.io import atomic_write_text
from engine.registry import did_you_mean

PREFIX = "timm:"
# Short architecture names (registered as backbones by engine.models.timm) of the models DML papers start from.
ALIASES = {
    "vit_s16_dino": "vit_small_patch16_224.dino",
    "vit_b16_dino": "vit_base_patch16_224.dino",
    "vit_s14_dinov2": "vit_small_patch14_dinov2.lvd142m",
    "vit_b14_dinov2": "vit_base_patch14_dinov2.lvd142m",
    "vit_s16_in21k": "vit_small_patch16_224.augreg_in21k_ft_in1k",
    "convnext_t": "convnext_tiny.fb_in1k",
    "convnext_s": "convnext_small.fb_in1k",
    "convnext_b": "convnext_base.fb_in1k",
}
NAMES_FILE = Path(__file__).with_name("timm_models.json")
# timm looks for these files in a hub repository, in this order (timm.models._hub.load_state_dict_from_hf).
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


class TimmNameError(ValueError):
    """A ``timm:`` name that the installed timm does not have (or no timm at all)."""


@dataclass(frozen=True)
class TimmName:
    """A resolved timm model name: the architecture, the pretrained tag, and where its weights come from."""

    architecture: str
    tag: str | None  # None: the architecture has no pretrained weights
    hf_hub_id: str | None
    url: str | None

    @property
    def name(self) -> str:
        return f"{self.architecture}.{self.tag}" if self.tag else self.architecture


def installed_version() -> str | None:
    try:
        return importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return None


def build() -> dict[str, Any]:
    """The names of the installed timm (imports it): architectures, pretrained names and their weight sources."""
    import timm
    from timm.models import get_pretrained_cfg

    architectures = timm.list_models()
    sources = {}
    for name in timm.list_models(pretrained=True):
        cfg = get_pretrained_cfg(name)
        # timm takes the hub over the URL when both exist, so the URL only matters without a hub repository
        sources[name] = {"hf_hub_id": cfg.hf_hub_id or None, "url": None if cfg.hf_hub_id else cfg.url or None}
    default_tags = {}
    for arch in architectures:
        cfg = get_pretrained_cfg(arch)
        if cfg is not None and cfg.tag and f"{arch}.{cfg.tag}" in sources:
            default_tags[arch] = cfg.tag
    return {"timm_version": timm.__version__, "architectures": architectures, "default_tags": default_tags,
            "pretrained": sources}


def write() -> Path:
    atomic_write_text(NAMES_FILE, json.dumps(build(), indent=0, sort_keys=True, separators=(",", ":")) + "\n")
    _names.cache_clear()
    return NAMES_FILE


@functools.cache
def _names() -> dict[str, Any]:
    version = installed_version()
    if version is None:
        raise TimmNameError("timm: architectures need the timm package, which is not installed")
    if NAMES_FILE.is_file():
        stored = json.loads(NAMES_FILE.read_text())
        if stored.get("timm_version") == version:
            return stored
    return build()  # another timm than the stored list's: ask it (slow, but right)


def names() -> list[str]:
    """Every accepted name: the architectures and the pretrained ``architecture.tag`` names."""
    stored = _names()
    return [*stored["architectures"], *stored["pretrained"]]


def resolve(name: str) -> TimmName:
    """The architecture, tag and weight source of a timm model name; TimmNameError naming what is allowed."""
    stored = _names()
    architecture, _, tag = name.partition(".")
    if architecture not in stored["architectures"]:
        raise TimmNameError(
            f"unknown timm model {name!r}{did_you_mean(name, names())}; list them with "
            f"python -c \"import timm; print(timm.list_models('{architecture.split('_')[0]}*', pretrained=True))\""
        )
    tag = tag or stored["default_tags"].get(architecture)
    if tag is None:
        return TimmName(architecture, None, None, None)
    full = f"{architecture}.{tag}"
    if full not in stored["pretrained"]:
        tags = sorted(n.partition(".")[2] for n in stored["pretrained"] if n.startswith(architecture + "."))
        raise TimmNameError(f"timm model {architecture!r} has no pretrained tag {tag!r}{did_you_mean(tag, tags)}; "
                            f"allowed tags: {', '.join(tags) or 'none'}")
    source = stored["pretrained"][full]
    return TimmName(architecture, tag, source["hf_hub_id"], source["url"])


def timm_name_of(backbone: str) -> str | None:
    """The timm model name behind a parsed backbone (``timm:<name>`` or an alias); None for the others."""
    if backbone.startswith(PREFIX):
        return backbone[len(PREFIX) :]
    return ALIASES.get(backbone)


def hf_hub_cache() -> Path:
    """Where huggingface_hub caches repositories: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def torch_hub_checkpoints() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def offline() -> bool:
    """Whether huggingface_hub is told not to download (HF_HUB_OFFLINE=1, as on compute nodes)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def cached_weights(model: TimmName) -> Path | None:
    """The cached weight file timm would load for *model*, or None when it is not in the caches."""
    if model.hf_hub_id:
        snapshots = hf_hub_cache() / f"models--{model.hf_hub_id.replace('/', '--')}" / "snapshots"
        for filename in HUB_FILES:
            found = sorted(snapshots.glob(f"*/{filename}")) if snapshots.is_dir() else []
            if found:
                return found[0]
    if model.url:
        candidate = torch_hub_checkpoints() / PurePosixPath(model.url.split("?")[0]).name
        if candidate.is_file():
            return candidate
    return None


def fetch_hint(model: TimmName) -> str:
    """One line: what to download for *model*'s weights, the exact command, and how to point a run at the file."""
    if model.hf_hub_id:
        where = (f"fetch the Hugging Face repository {model.hf_hub_id} ({HUB_FILES[0]}) where there is internet: "
                 f"`hf download {model.hf_hub_id} {HUB_FILES[0]}` (fills $HF_HOME/hub; copy it to this machine's "
                 f"{hf_hub_cache()}), or `hf download {model.hf_hub_id} {HUB_FILES[0]} --local-dir DIR` and set "
                 f"model.weights_path='DIR/{HUB_FILES[0]}'")
    elif model.url:
        where = f"download {model.url} where there is internet and set model.weights_path=<that file>"
    else:
        return f"timm model {model.name!r} has no pretrained weights; set model.pretrained=false"
    return f"{where}; or set model.pretrained=false"
