"""Datasets laid out as class folders (CUB200-2011, CARS196 and the embedded sets).

Layout::

    <dataset>/images/<class folder>/<image file>

The class folders are read (and the layout checked) by :func:`engine.data.read_class_folders`,
which needs no torch, so that the same check runs before a run. The first half of the classes
trains, the second half tests (zero-shot: test classes are unseen in training).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from engine.data import DatasetError, read_class_folders


@dataclass
class ImageList:
    """The images of one split: file paths, labels 0..C-1 and the class names behind them.

    ``query``/``gallery``: row indices, for a split that is evaluated as queries against a gallery (In-Shop);
    None for the usual all-against-all retrieval.
    """

    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    query: np.ndarray | None = None
    gallery: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Splits:
    train: ImageList
    test: ImageList | None  # None: left out on purpose (eval.test=false)
    val: ImageList | None = None
    info: dict = field(default_factory=dict)


def image_list(classes: list[tuple[str, list[Path]]]) -> ImageList:
    paths: list[Path] = []
    labels: list[int] = []
    for label, (_, files) in enumerate(classes):
        paths.extend(files)
        labels.extend([label] * len(files))
    return ImageList(paths, np.asarray(labels, dtype=np.int64), [name for name, _ in classes])


def split_by_classes(classes: list, fraction: float) -> tuple[list, list]:
    cut = int(fraction * len(classes))
    if cut < 1 or cut >= len(classes):
        raise DatasetError(f"data.tv_split_perc={fraction} leaves no class on one side of {len(classes)} classes")
    return classes[:cut], classes[cut:]


def class_subset(images: ImageList, classes: list[int]) -> ImageList:
    """The images of the given classes (labels renumbered 0..len(classes)-1 in that order)."""
    relabel = np.full(images.num_classes, -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    rows = np.flatnonzero(relabel[images.labels] >= 0)
    return ImageList([images.paths[i] for i in rows], relabel[images.labels[rows]], [images.class_names[c] for c in classes])


def class_folds(train: ImageList, folds: int, fold: int) -> tuple[ImageList, ImageList]:
    """Class-disjoint k-fold cross-validation: training class c belongs to fold c mod k; fold *fold* validates.

    Dealing classes round-robin rather than in blocks keeps each fold a spread of the class list, whose order often
    follows a taxonomy (CUB200's species, CARS196's makes)."""
    if folds > train.num_classes:
        raise DatasetError(f"data.folds={folds} is more than the {train.num_classes} training classes")
    val = [c for c in range(train.num_classes) if c % folds == fold]
    rest = [c for c in range(train.num_classes) if c % folds != fold]
    return class_subset(train, rest), class_subset(train, val)


def split_by_samples(classes: list[tuple[str, list[Path]]], fraction: float) -> tuple[list, list]:
    """Per class, evenly spaced images stay in train and the rest validate (classes shared)."""
    train, val = [], []
    for name, files in classes:
        n_train = int(round(fraction * len(files)))
        n_train = min(max(n_train, 1), len(files) - 1) if len(files) > 1 else 1
        keep = set(np.unique(np.round(np.linspace(0, len(files) - 1, n_train)).astype(int)).tolist())
        train.append((name, [f for i, f in enumerate(files) if i in keep]))
        rest = [f for i, f in enumerate(files) if i not in keep]
        if rest:
            val.append((name, rest))
    return train, val


def half_split(root: Path, *, use_tv_split: bool, by_samples: bool, fraction: float) -> Splits:
    """The CUB200/CARS196 protocol: first half of the classes train, second half test."""
    classes = read_class_folders(root / "images")
    half = len(classes) // 2
    train_classes, test_classes = classes[:half], classes[half:]
    val = None
    if use_tv_split:
        splitter = split_by_samples if by_samples else split_by_classes
        train_classes, val_classes = splitter(train_classes, fraction)
        val = image_list(val_classes)
    return Splits(train=image_list(train_classes), test=image_list(test_classes), val=val)


def load_rgb(path: Path) -> torch.Tensor:
    """Decode an image file into a uint8 CHW RGB tensor (grayscale and RGBA converted, as the original)."""
    with Image.open(path) as image:
        return F.pil_to_tensor(image.convert("RGB"))


class ImageDataset(Dataset):
    """``(image, label, index)`` items of an :class:`ImageList`, optionally decoded once into RAM.

    With ``image_cache`` (an :class:`engine.data.cache.ImageCache`) the uint8 images come from the
    pre-resized cache on disk instead of the image files; the transform is the same.
    """

    def __init__(self, images: ImageList, transform, *, in_memory: bool = False, cache: dict | None = None,
                 image_cache=None):
        self.images = images
        self.transform = transform
        self.labels = torch.as_tensor(images.labels)
        self.image_cache = image_cache
        self._rows = image_cache.rows_of(images.paths) if image_cache is not None else None
        self._decoded: list[torch.Tensor] | None = None
        if in_memory:
            # A cache shared between the datasets of one run decodes each file once.
            cache = {} if cache is None else cache
            for index, path in enumerate(images.paths):
                if path not in cache:
                    cache[path] = self._load(index)
            self._decoded = [cache[p] for p in images.paths]

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, index: int) -> torch.Tensor:
        if self._rows is not None:
            return self.image_cache.read(int(self._rows[index]))
        return load_rgb(self.images.paths[index])

    def raw(self, index: int) -> torch.Tensor:
        return self._decoded[index] if self._decoded is not None else self._load(index)

    def __getitem__(self, index: int):
        return self.transform(self.raw(index)), self.labels[index], index
