"""Datasets: a registry of loaders that all return :class:`Splits` of class-labelled image lists.

``create_splits(name, ...)`` gives the train/test (and optional validation) image lists;
``list_datasets()`` the registered names. Real datasets are read from
``<source_path>/<name>``; the embedded ones (glyphs, digits) are generated once into
that same place and then read by the same class-folder loader as CUB200/CARS196.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from engine.data.cache import ImageCache, default_cache_size, ensure_image_cache, open_split_cache
from engine.data.folder import DatasetError, ImageDataset, ImageList, Splits, half_split
from engine.data.sop import load_sop
from engine.data.transforms import AUGMENTATIONS, build_transform
from engine.registry import Registry

__all__ = [
    "DATASETS",
    "AUGMENTATIONS",
    "DatasetError",
    "DatasetSpec",
    "ImageCache",
    "ImageDataset",
    "ImageList",
    "Splits",
    "build_transform",
    "create_splits",
    "data_root",
    "default_cache_size",
    "ensure_image_cache",
    "list_datasets",
    "open_split_cache",
]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    load: Callable[..., Splits]
    embedded: bool = False


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def data_root(source_path: str | os.PathLike | None = None) -> Path:
    """Parent folder of the datasets: the argument, else $DMLTUI_DATA, else the user data dir."""
    if source_path:
        return Path(source_path).expanduser()
    if os.environ.get("DMLTUI_DATA"):
        return Path(os.environ["DMLTUI_DATA"]).expanduser()
    return Path(platformdirs.user_data_dir("dmltui")) / "datasets"


def _register(name: str, description: str, load: Callable[..., Splits], embedded: bool = False) -> None:
    DATASETS.register(name)(DatasetSpec(name, description, load, embedded))


def _embedded_loader(name: str) -> Callable[..., Splits]:
    def load(root: Path, **split_options) -> Splits:
        from engine.data.embedded import ensure_embedded

        # The dataset never depends on the run seed: every run sees the same images.
        folder = ensure_embedded(name, root.parent)
        return half_split(folder, **split_options)

    return load


_register("cub200", "CUB200-2011 birds: 200 classes, 100 train / 100 test", half_split)
_register("cars196", "CARS196: 196 car models, 98 train / 98 test", half_split)
_register("online_products", "Stanford Online Products: 22,634 classes, Info_Files split", load_sop)
_register("glyphs", "Embedded: Latin/Greek/Cyrillic glyphs rendered from matplotlib's fonts, 32x32", _embedded_loader("glyphs"), True)
_register("digits", "Embedded: scikit-learn's 8x8 digits, classes 0-4 train / 5-9 test", _embedded_loader("digits"), True)


def list_datasets() -> list[str]:
    return DATASETS.names()


def create_splits(
    name: str,
    source_path: str | os.PathLike | None = None,
    *,
    use_tv_split: bool = False,
    tv_split_by_samples: bool = False,
    tv_split_perc: float = 0.8,
) -> Splits:
    spec = DATASETS.get(name)
    root = data_root(source_path) / name
    splits = spec.load(root, use_tv_split=use_tv_split, by_samples=tv_split_by_samples, fraction=tv_split_perc)
    splits.info.update(dataset=name, root=str(root))
    return splits
