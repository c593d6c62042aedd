"""The pre-resized image cache (``data.cache = "resized"``): decode every JPEG once, read uint8 arrays after.

Decoding full-size JPEGs in the loader's workers can starve a GPU. The cache decodes
each image of a dataset once, shrinks it so that its shorter side is ``size`` (never
enlarging), and keeps the uint8 pixels on disk. Training then reads raw bytes and
runs the very same torchvision v2 transforms on them, so augmentation is identical
apart from the pre-resize (the default ``size`` is the eval transform's first resize,
256 for 224 px input, which the random-resized crop and the centre crop then cut from).

Layout: one directory per dataset file set and size, ``<cache_dir>/<size>px-<fingerprint>/``
(default cache_dir: ``<dataset folder>/.dmltui-cache``), holding

* ``pixels.u8``: every image's CHW uint8 bytes, concatenated (images keep their own
  aspect ratio, so no padding is stored; CHW is what :func:`load_rgb` returns);
* ``index.npy``: an ``N x 4`` int64 array of (byte offset, channels, height, width);
* ``meta.json``: format version, size, fingerprint and the image keys (paths relative to
  the dataset folder) in row order. It is written last.

The fingerprint hashes the format version, the size and every image's relative path,
byte size and mtime, so a changed dataset gets a new directory (the stale one is
removed). A directory is built under a temporary name and renamed into place once
complete, under a file lock per size, so a crashed build is never read and concurrent
builders (DDP ranks, parallel runs) build it once: the others wait and then use it.
Readers open ``pixels.u8`` as a read-only ``numpy.memmap``, lazily in each process
(DataLoader workers included; the map is never pickled).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

from engine.data import CACHE_DIRNAME
from engine.data.folder import DatasetError, Splits, load_rgb

log = logging.getLogger("engine")

CACHE_FORMAT = 1
CACHE_MODES = ("off", "resized")


def default_cache_size(input_size: int) -> int:
    """The eval transform's first resize (shorter side 256/224 of the input size): 256 for 224 px."""
    return round(input_size * 256 / 224)


def resize_shorter_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shrink a CHW image so that its shorter side is ``size`` (antialiased); smaller images are kept as they are."""
    height, width = image.shape[-2:]
    if min(height, width) <= size:
        return image
    return F.resize(image, [size], antialias=True)


def _key(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def fingerprint(paths: list[Path], root: Path, size: int) -> str:
    """Hash of the format, the size and each image's relative path, byte size and mtime."""
    digest = hashlib.sha256(f"dmltui-image-cache {CACHE_FORMAT} {size}\n".encode())
    for path in paths:
        try:
            stat = path.stat()
        except OSError as error:
            raise DatasetError(f"image cache: cannot read {path}: {error.strerror}") from None
        digest.update(f"{_key(path, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class ImageCache:
    """A built cache directory: ``read(row)`` gives the uint8 CHW tensor of one image."""

    def __init__(self, directory: Path, root: Path, *, built: bool = False, build_s: float = 0.0):
        self.directory = Path(directory)
        self.root = Path(root)
        self.built = built  # whether this call built it (False: it was already there)
        self.build_s = build_s
        meta = json.loads((self.directory / "meta.json").read_text())
        self.size: int = meta["size"]
        self.nbytes: int = meta["bytes"]
        self._rows = {key: row for row, key in enumerate(meta["keys"])}
        self._index = np.load(self.directory / "index.npy")
        self._pixels: np.memmap | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def rows_of(self, paths: Iterable[Path]) -> np.ndarray:
        """Row of each image path; DatasetError for an image the cache does not hold."""
        rows = []
        for path in paths:
            row = self._rows.get(_key(Path(path), self.root))
            if row is None:
                raise DatasetError(f"image cache {self.directory} does not hold {path}")
            rows.append(row)
        return np.asarray(rows, dtype=np.int64)

    def read(self, row: int) -> torch.Tensor:
        if self._pixels is None:  # opened lazily, once per process (DataLoader workers open their own)
            self._pixels = np.memmap(self.directory / "pixels.u8", dtype=np.uint8, mode="r")
        offset, channels, height, width = (int(v) for v in self._index[row])
        pixels = np.array(self._pixels[offset : offset + channels * height * width])  # a copy: writable, unmapped
        return torch.from_numpy(pixels).view(channels, height, width)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pixels"] = None  # workers map the file themselves
        return state


def _valid(directory: Path, digest: str, size: int) -> bool:
    """A complete cache directory of this fingerprint and size (partial builds never get the final name)."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        if (meta.get("format"), meta.get("fingerprint"), meta.get("size")) != (CACHE_FORMAT, digest, size):
            return False
        index = np.load(directory / "index.npy", mmap_mode="r")
        return (
            index.shape == (len(meta["keys"]), 4)
            and (directory / "pixels.u8").stat().st_size == meta["bytes"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


class _Resized(Dataset):
    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return resize_shorter_side(load_rgb(self.paths[index]), self.size).contiguous()


def _decoded(paths: list[Path], size: int, workers: int) -> Iterator[torch.Tensor]:
    """The resized images in order, decoded by ``workers`` processes (0: in this one)."""
    loader = DataLoader(_Resized(paths, size), batch_size=None, num_workers=workers,
                        prefetch_factor=8 if workers else None)
    yield from loader


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _build(directory: Path, paths: list[Path], keys: list[str], digest: str, size: int, workers: int) -> None:
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".tmp-{size}px-"))
    try:
        index = np.zeros((len(paths), 4), dtype=np.int64)
        offset = 0
        with open(tmp / "pixels.u8", "wb") as handle:
            for row, image in enumerate(_decoded(paths, size, workers)):
                pixels = image.numpy()
                handle.write(memoryview(pixels).cast("B"))
                index[row] = (offset, *pixels.shape)
                offset += pixels.nbytes
            handle.flush()
            os.fsync(handle.fileno())
        with open(tmp / "index.npy", "wb") as handle:
            np.save(handle, index)
            handle.flush()
            os.fsync(handle.fileno())
        meta = {"format": CACHE_FORMAT, "size": size, "fingerprint": digest, "count": len(keys), "bytes": offset,
                "keys": keys}
        with open(tmp / "meta.json", "w") as handle:
            json.dump(meta, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a cache is meant to be shared
        os.rename(tmp, directory)  # atomic: the final name only ever holds a complete cache
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_image_cache(paths: Iterable[Path], root: Path, size: int, cache_dir: str | os.PathLike | None = None, *,
                       workers: int = 0) -> ImageCache:
    """The cache of these images at this size: reused when valid, else built (once, under a lock)."""
    if size < 1:
        raise ValueError(f"image cache size must be positive, got {size}")
    root = Path(root)
    paths = sorted({Path(p) for p in paths})
    if not paths:
        raise DatasetError("image cache: the dataset has no images")
    keys = [_key(p, root) for p in paths]
    digest = fingerprint(paths, root, size)
    folder = Path(cache_dir).expanduser() if cache_dir else root / CACHE_DIRNAME
    directory = folder / f"{size}px-{digest[:16]}"
    if _valid(directory, digest, size):
        return ImageCache(directory, root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder / f"{size}px.lock")
        lock.acquire()
    except OSError as error:
        raise DatasetError(
            f"image cache: cannot write to {folder} ({error.strerror}); set data.cache_dir to a writable folder"
        ) from None
    try:
        if _valid(directory, digest, size):  # another process built it while this one waited
            return ImageCache(directory, root)
        # Only lock holders build, so leftovers are from crashed builds or an older dataset version.
        for stale in list(folder.glob(f".tmp-{size}px-*")) + list(folder.glob(f"{size}px-*")):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        log.info("image cache: decoding %d images to shorter side %d px into %s", len(paths), size, directory)
        started = time.perf_counter()
        _build(directory, paths, keys, digest, size, workers)
        elapsed = time.perf_counter() - started
        cache = ImageCache(directory, root, built=True, build_s=elapsed)
        log.info("image cache: built in %.1f s (%.2f GB)", elapsed, cache.nbytes / 1e9)
        return cache
    finally:
        lock.release()


def open_split_cache(splits: Splits, size: int, cache_dir: str | os.PathLike | None = None, *,
                     workers: int = 0) -> ImageCache:
    """The cache of every image of a dataset's splits (train, test and validation share one cache)."""
    lists = [images for images in (splits.train, splits.test, splits.val) if images is not None]
    root = Path(splits.info.get("root") or os.path.commonpath([str(p) for images in lists for p in images.paths]))
    return ensure_image_cache((p for images in lists for p in images.paths), root, size, cache_dir, workers=workers)
