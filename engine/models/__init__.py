"""Backbones and the embedding model, looked up by an architecture string.

An architecture string is a registered backbone name followed by modifiers, e.g.
``resnet50_frozen_normalize`` (inventory §6):

* ``frozen``: BatchNorm layers stay in eval mode (running statistics frozen at their
  pretrained values); their affine weights still train, as in the original.
* ``normalize``: the embedding is L2-normalised.
* ``double``: global max pooling is added to global average pooling.
* ``he``: Kaiming-normal (fan_out) init of the embedding head, bias 0.

``create_model(arch, embed_dim=..., pretrained=..., weights_path=...)`` builds it;
``list_models()`` lists the backbones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.catalog import ArchSpec, parse_arch
from engine.registry import Registry


@dataclass(frozen=True)
class Backbone:
    """A trunk that maps images to a feature map, and what it expects as input."""

    build: Callable[[bool, str | None], tuple[nn.Module, int]]  # (pretrained, weights_path) -> (trunk, channels)
    input_size: int
    description: str
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


ARCHITECTURES: Registry[Backbone] = Registry("architecture")


def list_models() -> list[str]:
    return ARCHITECTURES.names()


class EmbeddingModel(nn.Module):
    """trunk → global pooling → linear head → (optional) L2 normalisation."""

    def __init__(self, trunk: nn.Module, channels: int, embed_dim: int, spec: ArchSpec):
        super().__init__()
        self.trunk = trunk
        self.spec = spec
        self.double_pool = "double" in spec.modifiers
        self.normalize = "normalize" in spec.modifiers
        self.frozen_bn = "frozen" in spec.modifiers
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
        pooled = F.adaptive_avg_pool2d(feature_map, 1).flatten(1)
        if self.double_pool:
            pooled = pooled + F.adaptive_max_pool2d(feature_map, 1).flatten(1)
        return pooled

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embedding = self.head(self.pool(self.trunk(images)))
        return F.normalize(embedding, dim=-1) if self.normalize else embedding


def create_model(arch: str, *, embed_dim: int, pretrained: bool = False, weights_path: str | None = None) -> EmbeddingModel:
    spec = parse_arch(arch)
    trunk, channels = ARCHITECTURES.get(spec.backbone).build(pretrained, weights_path)
    return EmbeddingModel(trunk, channels, embed_dim, spec)


def backbone_info(arch: str) -> Backbone:
    return ARCHITECTURES.get(parse_arch(arch).backbone)


# Registration of the built-in backbones (imported for their side effect).
from engine.models import bninception, googlenet, resnet, smallcnn  # noqa: E402,F401
from engine.models.weights import WeightsError  # noqa: E402,F401
