"""Backbones and the embedding model, looked up by an architecture string.

An architecture string is a registered backbone name followed by modifiers, e.g.
``resnet50_frozen_normalize`` (inventory §6):

* ``frozen``: BatchNorm layers stay in eval mode (running statistics frozen at their
  pretrained values); their affine weights still train, as in the original.
* ``normalize``: the embedding is L2-normalised.
* ``double``: global max pooling is added to global average pooling.
* ``he``: Kaiming-normal (fan_out) init of the embedding head, bias 0.

Besides the registered backbones, ``timm:<name>`` names any model of timm (see
:mod:`engine.models.timm`, which also registers short aliases such as ``vit_s16_dino``).

``create_model(arch, embed_dim=..., pretrained=..., weights_path=..., head=...)`` builds it
(``head="none"`` keeps the backbone's width as the embedding); ``from_config(config)`` builds the
model of a run and ``input_spec(config)`` the input it expects; ``list_models()`` lists the backbones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine import timm_hub
from engine.catalog import ArchSpec, parse_arch
from engine.data.transforms import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from engine.registry import Registry


@dataclass(frozen=True)
class Backbone:
    """A trunk that maps images to a feature map, and what it expects as input."""

    build: Callable[[bool, str | None], tuple[nn.Module, int]]  # (pretrained, weights_path) -> (trunk, channels)
    input_size: int
    description: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float | None = None  # None: evaluation resizes to 256/224 of the input, as the original
    interpolation: str = "bilinear"

    def create_trunk(self, spec: ArchSpec, options: TrunkOptions) -> Trunk:
        """The trunk (a feature map per image) and its channels; the options beyond the weights are timm's."""
        if options.backbone_kwargs or options.grad_checkpointing:
            key = "model.timm_kwargs" if options.backbone_kwargs else "model.grad_checkpointing"
            raise ValueError(f"{key} applies to timm: backbones only, not to {spec.backbone!r}")
        trunk, channels = self.build(options.pretrained, options.weights_path)
        return Trunk(trunk, channels, pooled=False)


@dataclass(frozen=True)
class TrunkOptions:
    """How to build a trunk: its weights, the network input side, and timm's own options."""

    pretrained: bool = False
    weights_path: str | None = None
    image_size: int | None = None
    backbone_kwargs: dict | None = None
    grad_checkpointing: bool = False


@dataclass(frozen=True)
class Trunk:
    module: nn.Module
    channels: int
    pooled: bool  # True: the trunk pools itself (timm models built headless) and returns (N, channels)


ARCHITECTURES: Registry[Backbone] = Registry("architecture")


def list_models() -> list[str]:
    return ARCHITECTURES.names()


class EmbeddingModel(nn.Module):
    """trunk → global pooling → linear head → (optional) L2 normalisation."""

    def __init__(self, trunk: nn.Module, channels: int, embed_dim: int, spec: ArchSpec, *, pooled: bool = False,
                 head: str = "linear"):
        super().__init__()
        self.trunk = trunk
        self.spec = spec
        self.pooled = pooled
        self.double_pool = "double" in spec.modifiers and not pooled  # a pooled trunk did its own double pooling
        self.normalize = "normalize" in spec.modifiers
        self.frozen_bn = "frozen" in spec.modifiers
        if head not in HEADS:
            raise ValueError(f"model.head={head!r} is not a head; allowed: {', '.join(HEADS)}")
        if head == "none":
            if embed_dim != channels:
                raise ValueError(f"model.head='none' keeps the width of {spec.backbone} ({channels}), but model.embed_dim="
                                 f"{embed_dim}; set model.embed_dim={channels}, or model.head='linear'")
            if "he" in spec.modifiers:
                raise ValueError("the _he modifier initialises the linear head, and model.head='none' has none")
            self.head = nn.Identity()
        else:
            self.head = nn.Linear(channels, embed_dim)
        if "he" in spec.modifiers:
            nn.init.kaiming_normal_(self.head.weight, mode="fan_out")
            nn.init.zeros_(self.head.bias)
        if self.frozen_bn:
            self.train(self.training)

    def train(self, mode: bool = True) -> EmbeddingModel:
        super().train(mode)
        if self.frozen_bn:
            for module in self.trunk.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        if self.pooled:
            return feature_map
        pooled = F.adaptive_avg_pool2d(feature_map, 1).flatten(1)
        if self.double_pool:
            pooled = pooled + F.adaptive_max_pool2d(feature_map, 1).flatten(1)
        return pooled

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embedding = self.head(self.pool(self.trunk(images)))
        return F.normalize(embedding, dim=-1) if self.normalize else embedding


HEADS = ("linear", "none")


def create_model(arch: str, *, embed_dim: int, pretrained: bool = False, weights_path: str | None = None,
                 head: str = "linear", image_size: int | None = None, backbone_kwargs: dict | None = None,
                 grad_checkpointing: bool = False) -> EmbeddingModel:
    """The embedding model of *arch*; *image_size* sizes timm models with a fixed input (ViTs), and
    *backbone_kwargs* go to ``timm.create_model``."""
    spec = parse_arch(arch)
    options = TrunkOptions(pretrained, weights_path, image_size, backbone_kwargs, grad_checkpointing)
    trunk = _backbone(spec.backbone).create_trunk(spec, options)
    return EmbeddingModel(trunk.module, trunk.channels, embed_dim, spec, pooled=trunk.pooled, head=head)


def from_config(config, *, pretrained: bool | None = None) -> EmbeddingModel:
    """The embedding model of a run's config (``pretrained=False``: random weights, e.g. to load a checkpoint)."""
    model = config.model
    return create_model(
        model.arch, embed_dim=model.embed_dim, pretrained=model.pretrained if pretrained is None else pretrained,
        weights_path=model.weights_path if pretrained is not False else None, head=model.head,
        image_size=input_spec(config).size, backbone_kwargs=model.timm_kwargs, grad_checkpointing=model.grad_checkpointing,
    )


def _backbone(name: str) -> Backbone:
    if name.startswith(timm_hub.PREFIX):
        from engine.models.timm import timm_backbone

        return timm_backbone(name[len(timm_hub.PREFIX) :])
    return ARCHITECTURES.get(name)


def backbone_info(arch: str) -> Backbone:
    return _backbone(parse_arch(arch).backbone)


def input_spec(config) -> InputSpec:
    """The network input of a run: the config's data.image_size / data.mean / data.std where set, else the
    backbone's (a timm model's pretrained config: input size, mean, std, crop_pct, interpolation)."""
    backbone = backbone_info(config.model.arch)
    data = config.data
    size = data.image_size or backbone.input_size
    if data.augmentation == "big" and data.image_size is None:
        size = 256
    return InputSpec(size, tuple(data.mean) if data.mean else backbone.mean, tuple(data.std) if data.std else backbone.std,
                     backbone.crop_pct, backbone.interpolation)


# Registration of the built-in backbones (imported for their side effect).
from engine.models import bninception, googlenet, resnet, smallcnn, timm  # noqa: E402,F401
from engine.models.weights import WeightsError  # noqa: E402,F401
