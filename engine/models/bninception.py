"""BN-Inception (Ioffe & Szegedy, "Batch Normalization", 2015), defined here, loadable from the
``pretrainedmodels`` (Cadene) ImageNet checkpoint that the original codebase used.

Architecture (Inception-v2 with BatchNorm after every convolution, 1024 output channels; the
layout of the Caffe model that the checkpoint was ported from)::

    conv1_7x7_s2 (3→64, 7x7, stride 2) → max pool 3x3/2 → conv2_3x3_reduce (64→64, 1x1)
    → conv2_3x3 (64→192, 3x3) → max pool 3x3/2
    → inception 3a, 3b, 3c (stride 2) → 4a, 4b, 4c, 4d, 4e (stride 2) → 5a, 5b

Each inception block concatenates, in this order: a 1x1 branch, a 1x1→3x3 branch, a
1x1→3x3→3x3 ("double 3x3") branch and a pooling branch (3x3 average pooling with a 1x1
projection; 5b: 3x3 max pooling, stride 1, then the projection). The reduction blocks 3c and
4e have no 1x1 branch, their two 3x3 branches end with stride 2 and their pooling branch is
a 3x3/2 max pooling without projection. Every convolution has a bias and is followed by
BatchNorm (eps 1e-5) and ReLU; max pools use ``ceil_mode`` as in Caffe. A 224x224 input gives
a 1024x7x7 map.

Checkpoint compatibility: every layer has the Cadene name (``conv1_7x7_s2``,
``conv1_7x7_s2_bn``, ``inception_3a_1x1``, ``inception_3a_double_3x3_reduce_bn``, …,
``inception_5b_pool_proj_bn``) and shape, so ``model.weights_path=bn_inception-52deb4733.pth``
(or the re-export ``bn_inception-239d2248.pth``) loads with strict key matching. The loader
drops the checkpoint's ImageNet classifier (``last_linear.*``), reshapes the (1, C)
BatchNorm tensors of the older Caffe export to (C,), and fills in ``num_batches_tracked``,
which predates the file. A state dict saved from this trunk loads back the same way.

Input convention (the checkpoint's Caffe one: BGR channel order, 0–255 pixel range, mean
[104, 117, 128] in BGR order, no scaling). The shared transform pipeline only normalises,
so it is split in two:

1. ``Backbone.mean = (0.502, 0.4588, 0.4078)``, ``Backbone.std = (0.0039,) * 3`` (the
   original's numbers, in RGB order): a pixel p ∈ [0, 1] becomes (p − mean_c) / 0.0039,
   i.e. 256.4·p − (128.7, 117.6, 104.6) for (R, G, B), within 0.6 % of Caffe's
   255·p − (128, 117, 104).
2. The trunk's ``forward`` reverses the channels (RGB → BGR) before ``conv1_7x7_s2``.

Departures from the original: it was always pretrained; here ``model.pretrained=false``
gives a random (PyTorch default) initialisation, and ``model.pretrained=true`` needs the
file in ``model.weights_path`` (no maintained download exists). BatchNorm momentum is
PyTorch's default 0.1 (the newer ``pretrainedmodels`` file sets 0.9, a Caffe conversion slip
that only matters when the statistics are not frozen).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from engine.models import ARCHITECTURES, Backbone
from engine.models.weights import WeightsError, load_strict, read_state_dict

CHECKPOINT = "bn_inception-52deb4733.pth"
CHECKPOINT_URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"


class Block(NamedTuple):
    """Widths of one inception block (0: the branch is absent); ``reduce`` blocks have stride 2."""

    name: str
    cin: int
    b1x1: int
    b3x3_reduce: int
    b3x3: int
    double_reduce: int
    double: int
    pool: str  # "avg" (3x3/1), "max" (3x3/1, block 5b) or "max_s2" (reduction)
    pool_proj: int

    @property
    def cout(self) -> int:
        return self.b1x1 + self.b3x3 + self.double + (self.pool_proj or self.cin)


BLOCKS = (
    Block("3a", 192, 64, 64, 64, 64, 96, "avg", 32),  # → 256
    Block("3b", 256, 64, 64, 96, 64, 96, "avg", 64),  # → 320
    Block("3c", 320, 0, 128, 160, 64, 96, "max_s2", 0),  # → 576, stride 2
    Block("4a", 576, 224, 64, 96, 96, 128, "avg", 128),  # → 576
    Block("4b", 576, 192, 96, 128, 96, 128, "avg", 128),  # → 576
    Block("4c", 576, 160, 128, 160, 128, 160, "avg", 128),  # → 608
    Block("4d", 608, 96, 128, 192, 160, 192, "avg", 128),  # → 608
    Block("4e", 608, 0, 128, 192, 192, 256, "max_s2", 0),  # → 1056, stride 2
    Block("5a", 1056, 352, 192, 320, 160, 224, "avg", 128),  # → 1024
    Block("5b", 1024, 352, 192, 320, 192, 224, "max", 128),  # → 1024
)
OUT_CHANNELS = 1024


class BNInception(nn.Module):
    """The feature extractor: BGR flip, stem, ten inception blocks → (B, 1024, H/32, W/32)."""

    def __init__(self) -> None:
        super().__init__()
        self._conv("conv1_7x7_s2", 3, 64, 7, stride=2)
        self._conv("conv2_3x3_reduce", 64, 64, 1)
        self._conv("conv2_3x3", 64, 192, 3)
        for b in BLOCKS:
            p = f"inception_{b.name}_"
            stride = 2 if b.pool == "max_s2" else 1
            if b.b1x1:
                self._conv(p + "1x1", b.cin, b.b1x1, 1)
            self._conv(p + "3x3_reduce", b.cin, b.b3x3_reduce, 1)
            self._conv(p + "3x3", b.b3x3_reduce, b.b3x3, 3, stride=stride)
            self._conv(p + "double_3x3_reduce", b.cin, b.double_reduce, 1)
            self._conv(p + "double_3x3_1", b.double_reduce, b.double, 3)
            self._conv(p + "double_3x3_2", b.double, b.double, 3, stride=stride)
            if b.pool_proj:
                self._conv(p + "pool_proj", b.cin, b.pool_proj, 1)
        assert BLOCKS[-1].cout == OUT_CHANNELS

    def _conv(self, name: str, cin: int, cout: int, k: int, stride: int = 1) -> None:
        self.add_module(name, nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=True))
        self.add_module(name + "_bn", nn.BatchNorm2d(cout, eps=1e-5))

    def _cbr(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.get_submodule(name + "_bn")(self.get_submodule(name)(x)))

    @staticmethod
    def _pool(kind: str, x: torch.Tensor) -> torch.Tensor:
        if kind == "avg":
            return F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
        if kind == "max":
            return F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
        return F.max_pool2d(x, 3, stride=2, ceil_mode=True)

    def _block(self, b: Block, x: torch.Tensor) -> torch.Tensor:
        p = f"inception_{b.name}_"
        branches = [self._cbr(p + "1x1", x)] if b.b1x1 else []
        branches.append(self._cbr(p + "3x3", self._cbr(p + "3x3_reduce", x)))
        double = self._cbr(p + "double_3x3_reduce", x)
        branches.append(self._cbr(p + "double_3x3_2", self._cbr(p + "double_3x3_1", double)))
        pooled = self._pool(b.pool, x)
        branches.append(self._cbr(p + "pool_proj", pooled) if b.pool_proj else pooled)
        return torch.cat(branches, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flip(1)  # RGB → BGR, the checkpoint's channel order (see the module docstring)
        x = F.max_pool2d(self._cbr("conv1_7x7_s2", x), 3, stride=2, ceil_mode=True)
        x = self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        for b in BLOCKS:
            x = self._block(b, x)
        return x


def _adapt(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ImageNet classifier; (1, C) tensors of the old Caffe export become (C,)."""
    out = {}
    for key, value in state.items():
        if key.startswith("last_linear.") or key.startswith("fc."):
            continue
        target = own.get(key)
        if target is not None and value.shape != target.shape and value.dim() == target.dim() + 1 and value.shape[0] == 1:
            value = value.reshape(target.shape)
        out[key] = value
    return out


def build(pretrained: bool, weights_path: str | None) -> tuple[nn.Module, int]:
    net = BNInception()
    if weights_path:
        state = _adapt(read_state_dict(weights_path), net.state_dict())
        load_strict(net, state, source=weights_path, what=f"BN-Inception (pretrainedmodels {CHECKPOINT})")
    elif pretrained:
        raise WeightsError(
            "BN-Inception ImageNet weights have no maintained download (the original used pretrainedmodels' "
            f"{CHECKPOINT_URL}); get that file and pass it with model.weights_path=<file>, "
            "or set model.pretrained=false for a random initialisation"
        )
    return net, OUT_CHANNELS


ARCHITECTURES.register("bninception")(
    Backbone(
        build=build,
        input_size=224,
        description="BN-Inception (pretrainedmodels checkpoint from model.weights_path; BGR, 0-255 input)",
        mean=(0.502, 0.4588, 0.4078),
        std=(0.0039, 0.0039, 0.0039),
    )
)

__all__ = ["BLOCKS", "BNInception", "WeightsError", "build"]
