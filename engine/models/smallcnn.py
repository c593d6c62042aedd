"""A small CNN that trains in seconds on a CPU (the quickstart's backbone).

Four conv-BN-ReLU stages (32, 64, 128, 256 channels) with 2x2 max pooling between
them; native input 32x32. Never pretrained.
"""

from __future__ import annotations

from torch import nn

from engine.models import ARCHITECTURES, Backbone


def _stage(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return layers + [nn.MaxPool2d(2)] if pool else layers


def build(pretrained: bool, weights_path: str | None) -> tuple[nn.Module, int]:
    if pretrained or weights_path:
        raise ValueError("model.arch=smallcnn has no pretrained weights; set model.pretrained=false")
    trunk = nn.Sequential(*_stage(3, 32, True), *_stage(32, 64, True), *_stage(64, 128, True), *_stage(128, 256, False))
    return trunk, 256


ARCHITECTURES.register("smallcnn")(
    Backbone(build=build, input_size=32, description="4-stage CNN for 32x32 inputs, trains on a CPU")
)
