"""ResNet-50 from torchvision with ImageNet weights (IMAGENET1K_V1 = the original's pretrainedmodels weights)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from engine.models import ARCHITECTURES, Backbone
from engine.models.weights import WeightsError

__all__ = ["WeightsError", "build"]


def _load_resnet50(pretrained: bool, weights_path: str | None) -> nn.Module:
    net = tvm.resnet50(weights=None)
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsError(f"model.weights_path={str(path)!r} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state.get("state_dict", state), strict=False)
        if [k for k in missing if not k.startswith("fc.")] or unexpected:
            raise WeightsError(f"{path} is not a ResNet-50 state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
    elif pretrained:
        weights = tvm.ResNet50_Weights.IMAGENET1K_V1
        try:
            net.load_state_dict(weights.get_state_dict(progress=False))
        except Exception as error:  # network errors come as several exception types
            raise WeightsError(
                f"could not get the ImageNet weights of resnet50 ({type(error).__name__}: {error}); "
                f"download {weights.url} elsewhere and set model.weights_path=<file>, or set model.pretrained=false"
            ) from error
    return net


def build(pretrained: bool, weights_path: str | None) -> tuple[nn.Module, int]:
    net = _load_resnet50(pretrained, weights_path)
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return trunk, 2048


ARCHITECTURES.register("resnet50")(
    Backbone(build=build, input_size=224, description="ResNet-50 (torchvision, ImageNet IMAGENET1K_V1 weights)")
)
