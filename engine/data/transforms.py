"""Image transforms (torchvision transforms v2), one registry entry per augmentation.

The original's recipes (inventory §7.3) for ImageNet-sized inputs of size c:

* ``base``/``big``: RandomResizedCrop(c) + horizontal flip (``big`` is chosen with c = 256 by the caller)
* ``adv``: RandomResizedCrop(c) + RandomGrayscale(0.2) + ColorJitter(0.2, 0.2, 0.2, 0.2) + flip
* ``red``: Resize(256/224·c) + RandomCrop(c) + flip
* ``hypvit``: RandomResizedCrop(c, scale 0.2–1) + flip (Hyp-ViT's and OML's ViT recipe)
* eval: Resize(256/224·c) (shorter side) + CenterCrop(c)

Two recipes for the small embedded datasets, where crops and flips destroy the
classes (a mirrored glyph is another glyph):

* ``none``: the eval transform only (a plain resize to c×c)
* ``small``: a light random affine (±10°, ±10 % shift, 0.9–1.1 scale), no flip

A timm backbone brings its own eval resize (``crop_pct``) and interpolation (see :class:`InputSpec`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode, v2

from engine.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """The network input: side c, normalisation, and how images are resized (a timm model's pretrained config).

    ``crop_pct``: evaluation resizes the shorter side to floor(c / crop_pct) and centre-crops c (timm's rule);
    None keeps the original's round(c · 256/224).
    """

    size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float | None = None
    interpolation: str = "bilinear"

    @property
    def resize_side(self) -> int:
        return round(self.size * 256 / 224) if self.crop_pct is None else math.floor(self.size / self.crop_pct)

    @property
    def mode(self) -> InterpolationMode:
        return InterpolationMode(self.interpolation)

    def transform(self, augmentation: str, *, train: bool) -> v2.Compose:
        """Transform from a uint8 CHW tensor (or PIL image) to a normalised float tensor."""
        recipe = AUGMENTATIONS.get(augmentation)
        steps = recipe.train(self) if train else recipe.eval(self)
        return v2.Compose([v2.ToImage(), *steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])


@dataclass(frozen=True)
class Augmentation:
    train: Callable[[InputSpec], list[v2.Transform]]
    eval: Callable[[InputSpec], list[v2.Transform]]


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")


def _resize_centre_crop(s: InputSpec) -> list[v2.Transform]:
    return [v2.Resize(s.resize_side, interpolation=s.mode, antialias=True), v2.CenterCrop(s.size)]


def _plain_resize(s: InputSpec) -> list[v2.Transform]:
    return [v2.Resize((s.size, s.size), interpolation=s.mode, antialias=True)]


def _random_resized_crop(s: InputSpec) -> v2.Transform:
    return v2.RandomResizedCrop(s.size, interpolation=s.mode, antialias=True)


AUGMENTATIONS.register("base")(
    Augmentation(train=lambda s: [_random_resized_crop(s), v2.RandomHorizontalFlip()], eval=_resize_centre_crop)
)
AUGMENTATIONS.register("big")(AUGMENTATIONS.get("base"))
AUGMENTATIONS.register("adv")(
    Augmentation(
        train=lambda s: [
            _random_resized_crop(s),
            v2.RandomGrayscale(p=0.2),
            v2.ColorJitter(0.2, 0.2, 0.2, 0.2),
            v2.RandomHorizontalFlip(),
        ],
        eval=_resize_centre_crop,
    )
)
AUGMENTATIONS.register("red")(
    Augmentation(
        train=lambda s: [v2.Resize(s.resize_side, interpolation=s.mode, antialias=True), v2.RandomCrop(s.size),
                         v2.RandomHorizontalFlip()],
        eval=_resize_centre_crop,
    )
)
# The ViT metric-learning recipe of Hyp-ViT (htdt/hyp_metric) and OML (augs_hypvit_torch): crops of 20-100 % only.
AUGMENTATIONS.register("hypvit")(
    Augmentation(
        train=lambda s: [v2.RandomResizedCrop(s.size, scale=(0.2, 1.0), interpolation=s.mode, antialias=True),
                         v2.RandomHorizontalFlip()],
        eval=_resize_centre_crop,
    )
)
AUGMENTATIONS.register("none")(Augmentation(train=_plain_resize, eval=_plain_resize))
AUGMENTATIONS.register("small")(
    Augmentation(
        train=lambda s: [*_plain_resize(s), v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))],
        eval=_plain_resize,
    )
)


def build_transform(
    augmentation: str,
    size: int,
    *,
    train: bool,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    crop_pct: float | None = None,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """Transform from a uint8 CHW tensor (or PIL image) to a normalised float tensor."""
    return InputSpec(size, tuple(mean), tuple(std), crop_pct, interpolation).transform(augmentation, train=train)
