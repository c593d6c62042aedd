"""Image transforms (torchvision transforms v2), one registry entry per augmentation.

The original's recipes (inventory §7.3) for ImageNet-sized inputs of size c:

* ``base``/``big``: RandomResizedCrop(c) + horizontal flip (``big`` is chosen with c = 256 by the caller)
* ``adv``: RandomResizedCrop(c) + RandomGrayscale(0.2) + ColorJitter(0.2, 0.2, 0.2, 0.2) + flip
* ``red``: Resize(256/224·c) + RandomCrop(c) + flip
* eval: Resize(256/224·c) (shorter side) + CenterCrop(c)

Two recipes for the small embedded datasets, where crops and flips destroy the
classes (a mirrored glyph is another glyph):

* ``none``: the eval transform only (a plain resize to c×c)
* ``small``: a light random affine (±10°, ±10 % shift, 0.9–1.1 scale), no flip
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from engine.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augmentation:
    train: Callable[[int], list[v2.Transform]]
    eval: Callable[[int], list[v2.Transform]]


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")


def _resize_centre_crop(size: int) -> list[v2.Transform]:
    return [v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size)]


def _plain_resize(size: int) -> list[v2.Transform]:
    return [v2.Resize((size, size), antialias=True)]


AUGMENTATIONS.register("base")(
    Augmentation(train=lambda c: [v2.RandomResizedCrop(c, antialias=True), v2.RandomHorizontalFlip()], eval=_resize_centre_crop)
)
AUGMENTATIONS.register("big")(AUGMENTATIONS.get("base"))
AUGMENTATIONS.register("adv")(
    Augmentation(
        train=lambda c: [
            v2.RandomResizedCrop(c, antialias=True),
            v2.RandomGrayscale(p=0.2),
            v2.ColorJitter(0.2, 0.2, 0.2, 0.2),
            v2.RandomHorizontalFlip(),
        ],
        eval=_resize_centre_crop,
    )
)
AUGMENTATIONS.register("red")(
    Augmentation(
        train=lambda c: [v2.Resize(round(c * 256 / 224), antialias=True), v2.RandomCrop(c), v2.RandomHorizontalFlip()],
        eval=_resize_centre_crop,
    )
)
AUGMENTATIONS.register("none")(Augmentation(train=_plain_resize, eval=_plain_resize))
AUGMENTATIONS.register("small")(
    Augmentation(
        train=lambda c: [*_plain_resize(c), v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))],
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
) -> v2.Compose:
    """Transform from a uint8 CHW tensor (or PIL image) to a normalised float tensor."""
    recipe = AUGMENTATIONS.get(augmentation)
    steps = recipe.train(size) if train else recipe.eval(size)
    return v2.Compose([v2.ToImage(), *steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
