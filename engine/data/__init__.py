"""Datasets: a registry of loaders that all return :class:`Splits` of class-labelled image lists.

``create_splits(name, ...)`` gives the train/test (and optional validation) image lists;
``list_datasets()`` the registered names; ``check_layout(name, ...)`` checks that a
dataset's folder has the layout its loader reads. Real datasets are read from
``<source_path>/<name>``; the embedded ones (glyphs, digits) are generated once into
that same place and then read by the same class-folder loader as CUB200/CARS196. Where the paper's
datasets come from, and how they are downloaded, converted and checked: ``engine.data.sources``.

This module imports no torch: the registry, the data root and the layout checks live
here, and the loaders and image tools load on first use, so that the run manager can
name and check datasets without paying for torch.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from engine.registry import Registry

if TYPE_CHECKING:
    from engine.data.cache import ImageCache, default_cache_size, ensure_image_cache, open_split_cache
    from engine.data.folder import ImageDataset, ImageList, Splits
    from engine.data.transforms import AUGMENTATIONS, build_transform

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
    "check_layout",
    "create_splits",
    "data_root",
    "default_cache_size",
    "ensure_image_cache",
    "list_datasets",
    "open_split_cache",
]

_DEFERRED = {
    "ImageCache": "engine.data.cache",
    "default_cache_size": "engine.data.cache",
    "ensure_image_cache": "engine.data.cache",
    "open_split_cache": "engine.data.cache",
    "ImageDataset": "engine.data.folder",
    "ImageList": "engine.data.folder",
    "Splits": "engine.data.folder",
    "AUGMENTATIONS": "engine.data.transforms",
    "build_transform": "engine.data.transforms",
}


def __getattr__(name: str):
    if name in _DEFERRED:
        return getattr(importlib.import_module(_DEFERRED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class DatasetError(ValueError):
    """A dataset folder that is missing or malformed; the message names the path and the expected layout."""


def data_root(source_path: str | os.PathLike | None = None) -> Path:
    """Parent folder of the datasets: the argument, else $DMLTUI_DATA, else the user data dir."""
    if source_path:
        return Path(source_path).expanduser()
    if os.environ.get("DMLTUI_DATA"):
        return Path(os.environ["DMLTUI_DATA"]).expanduser()
    return Path(platformdirs.user_data_dir("dmltui")) / "datasets"


# ------------------------------------------------------------------ layouts (read by the loaders, checked before a run)

CACHE_DIRNAME = ".dmltui-cache"  # the resized-image cache inside a dataset folder (engine.data.cache)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_NUMERIC_PREFIX = re.compile(r"^(\d+)\.")
_ROOT_HELP = "<root> is data.source_path, else $DMLTUI_DATA; `dmltui data fetch <dataset>` downloads it there"

FOLDER_LAYOUT_HELP = (
    "expected <root>/<dataset>/images/<class folder>/<image files> (e.g. images/001.Black_footed_Albatross/x.jpg); "
    + _ROOT_HELP
)
SOP_LAYOUT_HELP = (
    "expected <root>/online_products/images/<super>_final/<files> and "
    "<root>/online_products/Info_Files/Ebay_train.txt, Ebay_test.txt; " + _ROOT_HELP
)
SOP_INFO_FILES = ("Ebay_train.txt", "Ebay_test.txt")
SOP_HEADER = ["image_id", "class_id", "super_class_id", "path"]


def read_class_folders(images_dir: Path) -> list[tuple[str, list[Path]]]:
    """Sorted (class name, sorted image files) pairs of a class-folder tree; raises DatasetError.

    Class folders are sorted by their numeric prefix when every folder has one
    (``001.Black_footed_Albatross``), else by name (Python's default string order, as the
    original did for CARS196). There must be two at least, so that train and test get some.
    """
    if not images_dir.is_dir():
        raise DatasetError(f"dataset folder {images_dir} does not exist; {FOLDER_LAYOUT_HELP}")
    folders = [p for p in images_dir.iterdir() if p.is_dir()]
    if not folders:
        raise DatasetError(f"{images_dir} has no class folders; {FOLDER_LAYOUT_HELP}")
    if all(_NUMERIC_PREFIX.match(p.name) for p in folders):
        folders.sort(key=lambda p: (int(_NUMERIC_PREFIX.match(p.name).group(1)), p.name))
    else:
        folders.sort(key=lambda p: p.name)
    classes = []
    for folder in folders:
        # '._' files are macOS resource forks that ship inside the CUB archive.
        files = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and "._" not in p.name and p.is_file()
        )
        if not files:
            raise DatasetError(f"class folder {folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        classes.append((folder.name, files))
    if len(classes) < 2:
        raise DatasetError(f"{images_dir} has 1 class folder; at least 2 are needed for a train/test split")
    return classes


def _check_class_folders(root: Path) -> None:
    read_class_folders(root / "images")


def sop_info_file(root: Path, name: str) -> Path:
    """``<root>/Info_Files/<name>`` after checking that it exists and starts with the expected header."""
    info = root / "Info_Files" / name
    if not info.is_file():
        raise DatasetError(f"missing {info}; {SOP_LAYOUT_HELP}")
    with info.open() as handle:
        header = handle.readline()
    if header.split() != SOP_HEADER:
        raise DatasetError(f"{info}: first line must be the header {' '.join(SOP_HEADER)!r}, got {header.rstrip()!r}")
    return info


def read_sop_rows(root: Path, name: str) -> list[tuple[int, int, Path]]:
    """(class_id, super_class_id, image path) rows of ``<root>/Info_Files/<name>``; the paths are not checked."""
    info = sop_info_file(root, name)
    rows = []
    for number, line in enumerate(info.read_text().split("\n")[1:], start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4 or not (parts[1].isdigit() and parts[2].isdigit()):
            raise DatasetError(f"{info}:{number}: expected 4 fields 'image_id class_id super_class_id path', got {line!r}")
        rows.append((int(parts[1]), int(parts[2]), root / "images" / parts[3]))
    return rows


def _check_sop(root: Path) -> None:
    for name in SOP_INFO_FILES:
        sop_info_file(root, name)


# ------------------------------------------------------------------ registry


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    load: Callable[..., Splits]
    check: Callable[[Path], None] | None  # raises DatasetError unless <root>/<name> has the layout load reads
    embedded: bool = False


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _register(name: str, description: str, load: Callable[..., Splits], check: Callable[[Path], None] | None,
              embedded: bool = False) -> None:
    DATASETS.register(name)(DatasetSpec(name, description, load, check, embedded))


def _deferred_loader(module: str, function: str) -> Callable[..., Splits]:
    def load(root: Path, **split_options) -> Splits:
        return getattr(importlib.import_module(module), function)(root, **split_options)

    return load


_half_split = _deferred_loader("engine.data.folder", "half_split")


def _embedded_loader(name: str) -> Callable[..., Splits]:
    def load(root: Path, **split_options) -> Splits:
        from engine.data.embedded import ensure_embedded

        # The dataset never depends on the run seed: every run sees the same images.
        folder = ensure_embedded(name, root.parent)
        return _half_split(folder, **split_options)

    return load


_register("cub200", "CUB200-2011 birds: 200 classes, 100 train / 100 test", _half_split, _check_class_folders)
_register("cars196", "CARS196: 196 car models, 98 train / 98 test", _half_split, _check_class_folders)
_register("online_products", "Stanford Online Products: 22,634 classes, Info_Files split",
          _deferred_loader("engine.data.sop", "load_sop"), _check_sop)


def _check_inshop(root: Path) -> None:
    from engine.data.sources import SOURCES  # the layout check of `dmltui data fetch/check` (no torch)

    SOURCES.get("in_shop").layout(root)


_register("in_shop", "DeepFashion In-Shop: 3,997 training items; 14,218 queries against 12,612 gallery images of 3,985 items",
          _deferred_loader("engine.data.inshop", "load_inshop"), _check_inshop)
# The embedded sets are generated on demand, so there is no layout to check beforehand.
_register("glyphs", "Embedded: Latin/Greek/Cyrillic glyphs rendered from matplotlib's fonts, 32x32", _embedded_loader("glyphs"), None, True)
_register("digits", "Embedded: scikit-learn's 8x8 digits, classes 0-4 train / 5-9 test", _embedded_loader("digits"), None, True)


def list_datasets() -> list[str]:
    return DATASETS.names()


def check_layout(name: str, source_path: str | os.PathLike | None = None) -> None:
    """Raise DatasetError unless ``<data root>/<name>`` has the layout the dataset's loader reads.

    It reads folder listings and headers, not images, so it is quick enough to run before every run.
    """
    spec = DATASETS.get(name)
    if spec.check is not None:
        spec.check(data_root(source_path) / name)


def create_splits(
    name: str,
    source_path: str | os.PathLike | None = None,
    *,
    use_tv_split: bool = False,
    tv_split_by_samples: bool = False,
    tv_split_perc: float = 0.8,
    folds: int = 0,
    fold: int = 0,
    with_test: bool = True,
) -> Splits:
    """The dataset's train/test (and validation) image lists.

    *folds* >= 2: class-disjoint cross-validation, the training classes of fold *fold* validate. *with_test* False:
    ``Splits.test`` is None, so that a run tuning hyperparameters holds nothing of the test split to look at.
    """
    spec = DATASETS.get(name)
    root = data_root(source_path) / name
    splits = spec.load(root, use_tv_split=use_tv_split, by_samples=tv_split_by_samples, fraction=tv_split_perc)
    if folds:
        from engine.data.folder import class_folds

        splits.train, splits.val = class_folds(splits.train, folds, fold)
    if not with_test:
        splits.test = None
    splits.info.update(dataset=name, root=str(root))
    return splits


def splits_of(data, *, with_test: bool = True) -> Splits:
    """:func:`create_splits` for a run's ``data`` config section."""
    return create_splits(
        data.dataset, data.source_path, use_tv_split=data.use_tv_split, tv_split_by_samples=data.tv_split_by_samples,
        tv_split_perc=data.tv_split_perc, folds=data.folds, fold=data.fold, with_test=with_test,
    )
