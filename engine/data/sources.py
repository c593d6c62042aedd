"""Where the paper's datasets come from, and how they get into the layouts the loaders read.

``SOURCES`` is the one place that knows each dataset's archive: its URLs and where they come from, the published
checksum where one exists, the published image and class counts, size estimates, and the converter into the
loader's layout. The functions below are the steps of ``dmltui data fetch / check / list``; none of them draws
anything (progress goes through :class:`Hooks`):

* :func:`download`: HTTP(S) into a ``.part`` file that a later call resumes (``Range: bytes=N-``), retried when
  the connection drops;
* :func:`digests`: SHA-256 of every archive (recorded), and the published algorithm where there is a checksum;
* :func:`extract`: tar archives with ``filter="data"``, zip archives with no member outside the folder;
* the converters: CARS196 from ``cars_annos.mat`` into class folders, SOP's zip into ``images/`` +
  ``Info_Files/``, CUB200 and In-Shop as published;
* each source's ``inventory``, :func:`count_problems` and :func:`decode_problems`: a dataset's layout, counts and
  images;
* :func:`fetch`, :func:`check` and :func:`describe`: the three operations the CLI (and the TUI) call.

On disk, under the data root::

    <name>/                            a dataset; only ever created by renaming a complete one into place
    <name>/.dmltui-source.json         where it came from: URLs or files, SHA-256, date, counts
    .dmltui-tmp-<name>-XXXXXXXX/       a fetch in progress, or a crashed one (the next fetch removes it)
    .dmltui-downloads/<name>/*.part    partial downloads, kept only to resume from

The counts a dataset is checked against are the published ones. The user's config file can override them per
dataset (``[data.expected.<name>] images = N, classes = M``) for a private subset or a repacked mirror, and list
mirrors (``[data.mirrors] <name> = ["https://..."]``, tried before the registry's URLs); see
:func:`overrides_from_config`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from filelock import FileLock, Timeout

from engine.data import (
    CACHE_DIRNAME,
    SOP_INFO_FILES,
    DatasetError,
    data_root,
    read_class_folders,
    read_sop_rows,
    sop_info_file,
)
from engine.registry import Registry

SOURCE_RECORD = ".dmltui-source.json"
TMP_PREFIX = ".dmltui-tmp-"
DOWNLOADS = ".dmltui-downloads"
USER_AGENT = "dmltui-data-fetch/1"
RETRY_DELAYS = (1.0, 4.0)  # seconds before the 2nd and 3rd attempt after a dropped connection
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A fetch that failed (download, checksum, archive, conversion, counts); nothing was installed."""


class DownloadFailed(FetchError):
    """One URL that did not give the file; the next mirror may."""


class NotEnoughSpace(FetchError):
    pass


class SourceUsageError(ValueError):
    """A request that cannot work as given (no plain-HTTP URL, a file that does not exist)."""


class SourceConfigError(ValueError):
    """A ``[data]`` table of the user's config file that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class Expected:
    images: int
    classes: int
    origin: str  # "published: ..." or the config file that overrides it


@dataclass
class Inventory:
    """The images a dataset's loader would read, its class count, and files its own list names but lacks."""

    images: list[Path]
    classes: int
    missing: list[Path] = field(default_factory=list)
    listing: str = ""  # the dataset's own file list the missing files come from


@dataclass(frozen=True)
class Source:
    name: str  # the folder under the data root, and the dataset name of the loaders
    title: str
    homepage: str
    urls: tuple[str, ...]  # the archive, tried in order; empty when there is no plain-HTTP download
    urls_from: str  # where the URLs come from
    checksum: str | None  # "md5:<hex>" or "sha256:<hex>", published for the archive at `urls`; None: counts only
    checksum_from: str | None
    images: int  # published counts
    classes: int
    counts_from: str
    archive_bytes: int  # estimates, rounded up, for the disk-space check before any download
    extracted_bytes: int
    convert: Callable[[Path, Path], None]  # (folder holding the extracted inputs, dataset folder to create)
    inventory: Callable[[Path], Inventory]  # reads every listing: the counts and what the loader would read
    layout: Callable[[Path], None]  # cheap: folder listings and headers; raises DatasetError
    manual: str | None = None  # how to get the files when `urls` is empty

    @property
    def published(self) -> Expected:
        return Expected(self.images, self.classes, f"published: {self.counts_from}")


@dataclass(frozen=True)
class Input:
    """One file a fetch needs: a local path, or URLs tried in order that all stand for the same file."""

    locations: tuple[str, ...]
    official: bool  # stands for the published archive, so its published checksum must match

    @property
    def local(self) -> bool:
        return not _is_url(self.locations[0])


def _no_progress(stage: str, done: int, total: int | None) -> None:
    return None


def _no_message(message: str) -> None:
    return None


@dataclass(frozen=True)
class Hooks:
    """How a long operation reports: ``progress(stage, done, total)`` (bytes or images) and one-line messages."""

    progress: Callable[[str, int, int | None], None] = _no_progress
    say: Callable[[str], None] = _no_message


def human_bytes(count: float) -> str:
    units = ("B", "kB", "MB", "GB", "TB")
    index = 0
    while count >= 1000 and index < len(units) - 1:
        count /= 1000
        index += 1
    return f"{count:.0f} B" if index == 0 else f"{count:.1f} {units[index]}"


def _is_url(location: str) -> bool:
    return "://" in location


def _file_name(location: str) -> str:
    return PurePosixPath(urllib.request.urlparse(location).path).name if _is_url(location) else Path(location).name


# ------------------------------------------------------------------ layouts and inventories


def _find(top: Path, match: Callable[[Path], bool], depth: int = 4) -> Path | None:
    """The first path under *top* (itself included, breadth first, sorted) that *match* accepts."""
    if match(top):
        return top
    frontier = [top]
    for _ in range(depth):
        children = []
        for folder in frontier:
            for entry in sorted(folder.iterdir()):
                if match(entry):
                    return entry
                if entry.is_dir() and entry.name != "__MACOSX":
                    children.append(entry)
        frontier = children
    return None


def _class_folder_layout(folder: Path) -> None:
    read_class_folders(folder / "images")


def _class_folder_inventory(folder: Path) -> Inventory:
    classes = read_class_folders(folder / "images")
    return Inventory([path for _, files in classes for path in files], len(classes))


def _cub_inventory(folder: Path) -> Inventory:
    """Class folders; and every image that the archive's images.txt lists must be there."""
    found = _class_folder_inventory(folder)
    listing = folder / "images.txt"
    if listing.is_file():
        listed = [folder / "images" / line.split(maxsplit=1)[1] for line in listing.read_text().splitlines()
                  if len(line.split(maxsplit=1)) == 2]
        found.missing = [path for path in listed if not path.is_file()]
        found.listing = "images.txt"
    return found


def _sop_layout(folder: Path) -> None:
    for name in SOP_INFO_FILES:
        sop_info_file(folder, name)


def _sop_inventory(folder: Path) -> Inventory:
    rows = [row for name in SOP_INFO_FILES for row in read_sop_rows(folder, name)]
    images = [path for _, _, path in rows]
    return Inventory(images, len({class_id for class_id, _, _ in rows}), [p for p in images if not p.is_file()],
                     "Info_Files/Ebay_train.txt, Ebay_test.txt")


INSHOP_PARTITION = "list_eval_partition.txt"
INSHOP_HEADER = ["image_name", "item_id", "evaluation_status"]
INSHOP_STATUSES = ("train", "query", "gallery")
INSHOP_LAYOUT_HELP = (f"expected <root>/in_shop/{INSHOP_PARTITION} (DeepFashion's Eval/{INSHOP_PARTITION}) and the "
                      "images under <root>/in_shop/img/")


def read_inshop_partition(folder: Path) -> list[tuple[str, str, Path]]:
    """(item id, evaluation status, image path) rows of In-Shop's list_eval_partition.txt.

    The file starts with the number of images, then the header ``image_name item_id evaluation_status``;
    image names are relative to the dataset folder (``img/WOMEN/Dresses/id_00000002/02_1_front.jpg``).
    """
    partition = folder / INSHOP_PARTITION
    if not partition.is_file():
        raise DatasetError(f"missing {partition}; {INSHOP_LAYOUT_HELP}")
    lines = partition.read_text().splitlines()
    if len(lines) < 2 or not lines[0].strip().isdigit() or lines[1].split() != INSHOP_HEADER:
        raise DatasetError(f"{partition}: expected the image count on line 1 and the header "
                           f"{' '.join(INSHOP_HEADER)!r} on line 2; {INSHOP_LAYOUT_HELP}")
    rows = []
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[2] not in INSHOP_STATUSES:
            raise DatasetError(f"{partition}:{number}: expected 'image_name item_id evaluation_status' with a status "
                               f"of {', '.join(INSHOP_STATUSES)}, got {line!r}")
        rows.append((parts[1], parts[2], folder / parts[0]))
    if len(rows) != int(lines[0]):
        raise DatasetError(f"{partition}: line 1 announces {int(lines[0]):,} images but {len(rows):,} rows follow")
    return rows


def _inshop_layout(folder: Path) -> None:
    partition = folder / INSHOP_PARTITION
    if not partition.is_file() or not (folder / "img").is_dir():
        raise DatasetError(f"{folder} lacks {INSHOP_PARTITION} or img/; {INSHOP_LAYOUT_HELP}")
    with partition.open() as handle:
        handle.readline()
        if handle.readline().split() != INSHOP_HEADER:
            raise DatasetError(f"{partition}: line 2 must be the header {' '.join(INSHOP_HEADER)!r}")


def _inshop_inventory(folder: Path) -> Inventory:
    rows = read_inshop_partition(folder)
    images = [path for _, _, path in rows]
    return Inventory(images, len({item for item, _, _ in rows}), [p for p in images if not p.is_file()],
                     INSHOP_PARTITION)


# ------------------------------------------------------------------ converters: extracted inputs -> loader layout


def _missing_piece(what: str, staging: Path, source: str) -> FetchError:
    return FetchError(f"no {what} in the extracted files; expected {source}")


def _convert_cub(staging: Path, out: Path) -> None:
    """CUB_200_2011/ (images/<NNN.Name>/*.jpg and the txt files) becomes the dataset folder as it is."""
    top = _find(staging, lambda p: p.is_dir() and (p / "images.txt").is_file() and (p / "images").is_dir())
    if top is None:
        raise _missing_piece("images.txt next to an images/ folder", staging, "CUB_200_2011.tgz (CUB_200_2011/images.txt)")
    os.rename(top, out)


def safe_folder_name(text: str) -> str:
    """A class name as a portable folder name: runs of anything but letters, digits, '.', '+', '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("._") or "unnamed"


def cars_class_folders(class_names: Iterable[str]) -> list[str]:
    """``NNN.<safe class name>`` for class ids 1..196: sorted by name or by number, the folders keep the class-id
    order, the order the original codebase's split relied on (the first 98 classes train, the last 98 test)."""
    return [f"{index:03d}.{safe_folder_name(name)}" for index, name in enumerate(class_names, start=1)]


def _convert_cars(staging: Path, out: Path) -> None:
    """car_ims/*.jpg + cars_annos.mat (annotations: relative_im_path, class 1..196; class_names) -> images/<class>/."""
    import numpy as np  # loaded here: `data list` and `data check` need neither
    from scipy.io import loadmat

    mat_path = _find(staging, lambda p: p.name == "cars_annos.mat" and p.is_file())
    if mat_path is None:
        raise _missing_piece("cars_annos.mat", staging, "CARS196.zip, or car_ims.tgz and cars_annos.mat")
    try:
        mat = loadmat(mat_path, squeeze_me=True)
        annotations = np.atleast_1d(mat["annotations"])
        paths = [str(p) for p in np.atleast_1d(annotations["relative_im_path"])]
        labels = [int(c) for c in np.atleast_1d(annotations["class"])]
        names = [str(n) for n in np.atleast_1d(mat["class_names"])]
    except (KeyError, ValueError, TypeError, OSError) as error:
        raise FetchError(f"{mat_path}: not the CARS196 annotation file (annotations with relative_im_path and class, "
                         f"class_names): {error}") from None
    folders = cars_class_folders(names)
    images = out / "images"
    for relative, label in zip(paths, labels):
        if not 1 <= label <= len(folders):
            raise FetchError(f"{mat_path}: {relative} has class {label}; class_names holds {len(folders)} classes")
        source = mat_path.parent / relative
        if not source.is_file():
            raise FetchError(f"{mat_path} lists {relative}, which the archive does not hold")
        target = images / folders[label - 1] / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, target)
    os.rename(mat_path, out / "cars_annos.mat")


def _convert_sop(staging: Path, out: Path) -> None:
    """Stanford_Online_Products/ (<super>_final/ folders and the txt files beside them) -> images/ + Info_Files/."""
    train = _find(staging, lambda p: p.name == "Ebay_train.txt" and p.is_file())
    if train is None:
        raise _missing_piece("Ebay_train.txt", staging, "Stanford_Online_Products.zip (Stanford_Online_Products/Ebay_train.txt)")
    top = train.parent
    (out / "images").mkdir(parents=True)
    (out / "Info_Files").mkdir()
    for entry in sorted(top.iterdir()):
        if entry.is_dir() and entry.name.endswith("_final"):
            os.rename(entry, out / "images" / entry.name)
        elif entry.is_file() and entry.suffix == ".txt":
            os.rename(entry, out / "Info_Files" / entry.name)
        else:
            os.rename(entry, out / entry.name)


def _convert_inshop(staging: Path, out: Path) -> None:
    """img/ (from img.zip) and list_eval_partition.txt, wherever they were packed, side by side."""
    partition = _find(staging, lambda p: p.name == INSHOP_PARTITION and p.is_file())
    if partition is None:
        raise _missing_piece(INSHOP_PARTITION, staging, f"DeepFashion's Eval/{INSHOP_PARTITION}")
    images = _find(staging, lambda p: p.name == "img" and p.is_dir())
    if images is None:
        raise _missing_piece("img/ folder", staging, "DeepFashion In-Shop's img.zip (img/MEN/..., img/WOMEN/...)")
    out.mkdir()
    os.rename(images, out / "img")
    os.rename(partition, out / INSHOP_PARTITION)


# ------------------------------------------------------------------ the registry

SOURCES: Registry[Source] = Registry("dataset")


def _register(source: Source) -> None:
    SOURCES.register(source.name)(source)


_register(Source(
    name="cub200",
    title="CUB200-2011 (Caltech-UCSD Birds)",
    homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/",
    urls=("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",),
    urls_from="CaltechDATA record 65de6-vp158, linked from the Caltech dataset page",
    checksum="md5:97eceeb196236b17998738112f37df78",
    checksum_from="the md5 CaltechDATA lists for CUB_200_2011.tgz on the record page (the archive of 2011)",
    images=11_788,
    classes=200,
    counts_from="Wah et al., The Caltech-UCSD Birds-200-2011 Dataset, CNS-TR-2011-001, and the dataset page",
    archive_bytes=1_200_000_000,
    extracted_bytes=1_300_000_000,
    convert=_convert_cub,
    inventory=_cub_inventory,
    layout=_class_folder_layout,
))
_register(Source(
    name="cars196",
    title="CARS196 (Stanford Cars)",
    homepage="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
    # The original files (ai.stanford.edu/~jkrause/car196/car_ims.tgz and cars_annos.mat) have been gone since 2023.
    urls=("http://ftp.cs.stanford.edu/cs/cvgl/CARS196.zip",),
    urls_from=("a mirror, not the original host (gone): Stanford CVGL's file server, which also serves SOP; "
               "the zip holds cars196/car_ims/ and cars196/cars_annos.mat"),
    checksum=None,
    checksum_from=None,
    images=16_185,
    classes=196,
    counts_from="Krause et al., 3D Object Representations for Fine-Grained Categorization, 3dRR 2013, and the dataset page",
    archive_bytes=2_000_000_000,
    extracted_bytes=2_000_000_000,
    convert=_convert_cars,
    inventory=_class_folder_inventory,
    layout=_class_folder_layout,
))
_register(Source(
    name="online_products",
    title="Stanford Online Products (SOP)",
    homepage="https://cvgl.stanford.edu/projects/lifted_struct/",
    urls=(
        "http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
        "https://drive.usercontent.google.com/download?id=1TclrpQOF_ullUP99wk_gjGN8pKvtErG8&export=download&confirm=t",
    ),
    urls_from=("the project page's ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip over HTTP (same server), "
               "then the Google Drive copy linked from the authors' repository rksltnl/Deep-Metric-Learning-CVPR16"),
    checksum=None,
    checksum_from=None,
    images=120_053,
    classes=22_634,
    counts_from=("Song et al., Deep Metric Learning via Lifted Structured Feature Embedding, CVPR 2016: "
                 "59,551 train images of 11,318 classes, 60,502 test images of 11,316"),
    archive_bytes=3_100_000_000,
    extracted_bytes=3_100_000_000,
    convert=_convert_sop,
    inventory=_sop_inventory,
    layout=_sop_layout,
))
_register(Source(
    name="in_shop",
    title="DeepFashion In-Shop Clothes Retrieval",
    homepage="https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html",
    urls=(),
    urls_from="none: the authors share the benchmark as a Google Drive folder, which plain HTTP cannot download",
    checksum=None,
    checksum_from=None,
    images=52_712,
    classes=7_982,
    counts_from=("Liu et al., DeepFashion, CVPR 2016, and the benchmark page: 52,712 images of 7,982 items "
                 "(25,882 train images of 3,997 items; 14,218 query and 12,612 gallery images of 3,985 items)"),
    archive_bytes=1_000_000_000,
    extracted_bytes=1_000_000_000,
    convert=_convert_inshop,
    inventory=_inshop_inventory,
    layout=_inshop_layout,
    manual=("In-Shop has no plain-HTTP download (DeepFashion shares it on Google Drive, linked from "
            "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html): download "
            "'In-shop Clothes Retrieval Benchmark/Img/img.zip' and 'Eval/list_eval_partition.txt' by hand"),
))


# ------------------------------------------------------------------ user config overrides


@dataclass(frozen=True)
class Overrides:
    mirrors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    expected: dict[str, Expected] = field(default_factory=dict)

    def expected_for(self, source: Source) -> Expected:
        return self.expected.get(source.name, source.published)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def overrides_from_config(config: dict, origin: str) -> Overrides:
    """The ``[data]`` table of the user's config file (parsed TOML; *origin* names the file in errors)::

        [data.mirrors]              # URLs of the archive, tried in order before the registry's
        cars196 = ["https://mirror.example/CARS196.zip"]

        [data.expected.cub200]      # counts of a private subset or repack, instead of the published ones
        images = 600
        classes = 10
    """
    data = config.get("data", {})
    if not isinstance(data, dict):
        raise SourceConfigError(f"{origin}: data must be a table ([data]), got {data!r}")
    unknown = sorted(set(data) - {"mirrors", "expected"})
    if unknown:
        raise SourceConfigError(f"{origin}: data.{unknown[0]} is not a setting; allowed: data.mirrors, data.expected")
    allowed = ", ".join(SOURCES.names())
    mirrors: dict[str, tuple[str, ...]] = {}
    for name, urls in _table(data, "mirrors", origin).items():
        key = f"data.mirrors.{name}"
        if name not in SOURCES:
            raise SourceConfigError(f"{origin}: {key}: unknown dataset; allowed: {allowed}")
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and _http(u) for u in urls):
            raise SourceConfigError(f"{origin}: {key} must be a list of http(s) URLs of the archive, "
                                    f"e.g. [\"https://mirror.example/{name}.zip\"]; got {urls!r}")
        mirrors[name] = tuple(urls)
    expected: dict[str, Expected] = {}
    for name, counts in _table(data, "expected", origin).items():
        key = f"data.expected.{name}"
        if name not in SOURCES:
            raise SourceConfigError(f"{origin}: {key}: unknown dataset; allowed: {allowed}")
        if not isinstance(counts, dict):
            raise SourceConfigError(f"{origin}: {key} must be a table with images and classes, got {counts!r}")
        for field_name, value in counts.items():
            if field_name not in ("images", "classes"):
                raise SourceConfigError(f"{origin}: {key}.{field_name} is not a setting; allowed: images, classes")
            if not _positive_int(value):
                raise SourceConfigError(f"{origin}: {key}.{field_name} must be a positive integer, got {value!r}")
        published = SOURCES.get(name)
        expected[name] = Expected(counts.get("images", published.images), counts.get("classes", published.classes),
                                  f"{origin} [data.expected.{name}]")
    return Overrides(mirrors, expected)


def _table(data: dict, key: str, origin: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise SourceConfigError(f"{origin}: data.{key} must be a table ([data.{key}]), got {value!r}")
    return value


def _http(location: str) -> bool:
    return urllib.request.urlparse(location).scheme in ("http", "https")


def plan_inputs(source: Source, *, files: Iterable[str] = (), url: str | None = None,
                mirrors: Iterable[str] = ()) -> list[Input]:
    """What a fetch reads: the given files/URLs (any packaging), a mirror URL of the published archive, or else the
    configured mirrors followed by the registry's URLs."""
    inputs = []
    for location in files:
        if _is_url(location) and not _http(location):
            raise SourceUsageError(f"{location}: only http(s) URLs can be downloaded")
        if not _is_url(location) and not Path(location).expanduser().is_file():
            raise SourceUsageError(f"{location}: no such file")
        inputs.append(Input((location if _is_url(location) else str(Path(location).expanduser()),), official=False))
    if url is not None:
        if not _http(url):
            raise SourceUsageError(f"{url}: only http(s) URLs can be downloaded")
        inputs.append(Input((url,), official=True))
    if not inputs:
        locations = (*mirrors, *source.urls)
        if not locations:
            raise SourceUsageError(source.manual or f"{source.name} has no download URL")
        inputs.append(Input(locations, official=True))
    return inputs


def estimates(source: Source, expected: Expected) -> tuple[int, int]:
    """(archive, extracted) byte estimates, scaled to the expected image count (a subset needs less)."""
    scale = expected.images / source.images
    return math.ceil(source.archive_bytes * scale), math.ceil(source.extracted_bytes * scale)


# ------------------------------------------------------------------ download, digests, extraction


class _Dropped(Exception):
    """The connection ended before the whole file came: worth another attempt that resumes."""


def _range_start_and_total(content_range: str | None) -> tuple[int | None, int | None]:
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (content_range or "").strip())
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _download_once(url: str, part: Path, progress: Callable[[int, int | None], None],
                   on_size: Callable[[int], None] | None, timeout: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # The .part is the whole file already (stopped between the last byte and the rename) or is not this file.
            if _range_start_and_total(error.headers.get("Content-Range"))[1] == offset:
                return
            part.unlink()
            raise _Dropped("the partial download does not match the file on the server; starting over") from None
        raise DownloadFailed(f"{url}: HTTP {error.code} {error.reason}") from None
    except (OSError, http.client.HTTPException) as error:  # URLError is an OSError
        raise _Dropped(f"{url}: {getattr(error, 'reason', error)}") from None
    with response:
        length = response.headers.get("Content-Length")
        if offset and response.status == 206:
            start, total = _range_start_and_total(response.headers.get("Content-Range"))
            if start != offset:
                raise DownloadFailed(f"{url}: asked for bytes {offset}- but got {response.headers.get('Content-Range')}")
        else:
            offset = 0  # a 200 answer to a Range request: the server sends the whole file, so start over
            total = int(length) if length else None
        if on_size is not None and total is not None:
            on_size(total - offset)
        done = offset
        with open(part, "ab" if offset else "wb") as out:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    progress(done, total)
            except (OSError, http.client.HTTPException) as error:  # reset, timeout, a chunked body cut short
                raise _Dropped(f"{url}: {error!r}") from None
    if total is not None and done < total:
        raise _Dropped(f"{url}: the connection closed after {done:,} of {total:,} bytes")


def download(url: str, target: Path, *, progress: Callable[[int, int | None], None] = lambda done, total: None,
             on_size: Callable[[int], None] | None = None, timeout: float = 60.0,
             delays: tuple[float, ...] = RETRY_DELAYS) -> Path:
    """Download *url* to *target* through ``<target>.part``, resuming what an earlier call left there.

    A dropped connection is retried (after each of *delays*) from the byte it reached; a server that ignores the
    Range header is read from the start. ``on_size(bytes still to come)`` runs once the size is known, before the
    body is read (the disk-space check). Raises DownloadFailed; the ``.part`` stays for the next call.
    """
    part = target.with_name(target.name + ".part")
    for attempt in range(len(delays) + 1):
        try:
            _download_once(url, part, progress, on_size, timeout)
            break
        except _Dropped as error:
            if attempt == len(delays):
                kept = part.stat().st_size if part.exists() else 0
                resume = (f"; {human_bytes(kept)} kept in {part} to resume from: run the same command again" if kept
                          else "")
                raise DownloadFailed(f"{error} (after {attempt + 1} attempts){resume}") from None
            time.sleep(delays[attempt])
    os.replace(part, target)
    return target


def digests(path: Path, progress: Callable[[int, int | None], None] = lambda done, total: None) -> dict[str, str]:
    """SHA-256 (recorded for every file) and MD5 (the algorithm of some published checksums), in one read."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    total, done = path.stat().st_size, 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
            done += len(chunk)
            progress(done, total)
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}


def archive_kind(path: Path) -> str | None:
    if zipfile.is_zipfile(path):
        return "zip"
    return "tar" if tarfile.is_tarfile(path) else None


class _CountingReader:
    """A file's read() that reports how far into the file it is (the tar stream's progress)."""

    def __init__(self, handle, report: Callable[[int], None]):
        self.handle, self.report, self.done, self.reported = handle, report, 0, 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.done += len(data)
        if self.done - self.reported >= CHUNK or not data:
            self.reported = self.done
            self.report(self.done)
        return data


def _member_target(dest: Path, name: str) -> Path | None:
    """Where a zip member goes; None for macOS metadata; FetchError for a member that would leave *dest*."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if parts and parts[0] == "__MACOSX":
        return None
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise FetchError(f"archive member {name!r} would be written outside the extraction folder; refusing the archive")
    return dest.joinpath(*parts)


def extract(archive: Path, dest: Path, progress: Callable[[int, int | None], None] = lambda done, total: None) -> None:
    """Unpack a tar (any compression) or zip archive into *dest*; nothing may land outside it (FetchError)."""
    total = archive.stat().st_size
    try:
        if archive_kind(archive) == "zip":
            with zipfile.ZipFile(archive) as bundle:
                done = 0
                for member in bundle.infolist():
                    target = _member_target(dest, member.filename)
                    if target is not None and member.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                    elif target is not None:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with bundle.open(member) as source, open(target, "wb") as out:
                            shutil.copyfileobj(source, out, CHUNK)
                    done += member.compress_size
                    progress(done, total)
        else:
            with open(archive, "rb") as handle:
                reader = _CountingReader(handle, lambda done: progress(done, total))
                with tarfile.open(fileobj=reader, mode="r|*") as bundle:
                    bundle.extractall(dest, filter="data")
    except tarfile.FilterError as error:
        raise FetchError(f"{archive}: {error}; refusing the archive") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise FetchError(f"{archive} is damaged or not a complete archive: {error}") from None


# ------------------------------------------------------------------ fetch


def _check_space(root: Path, needed: int, what: str, free_space: Callable[[Path], int]) -> None:
    free = free_space(root)
    if needed > free:
        raise NotEnoughSpace(f"not enough space under {root}: {what} needs {human_bytes(needed)}, "
                             f"{human_bytes(free)} free")


def _download_name(url: str) -> str:
    """The download's file name: one per URL, so that a .part is only ever resumed from the URL that started it."""
    return f"{hashlib.sha1(url.encode()).hexdigest()[:10]}-{_file_name(url) or 'download'}"


@dataclass
class _Obtained:
    path: Path
    origin: str  # the URL it came from, or the local path
    downloaded: bool


def _obtain(item: Input, downloads: Path, extracted_bytes: int, root: Path, free_space: Callable[[Path], int],
            hooks: Hooks) -> _Obtained:
    if item.local:
        return _Obtained(Path(item.locations[0]), item.locations[0], downloaded=False)
    failures = []
    for url in item.locations:
        target = downloads / _download_name(url)
        stage = f"download {_file_name(url)}"
        hooks.say(f"downloading {url}")

        def room_for(remaining: int) -> None:
            _check_space(root, remaining + extracted_bytes, f"the archive ({human_bytes(remaining)} to download) "
                         f"and its extraction (about {human_bytes(extracted_bytes)})", free_space)

        try:
            download(url, target, progress=lambda done, total, stage=stage: hooks.progress(stage, done, total),
                     on_size=room_for)
            return _Obtained(target, url, downloaded=True)
        except DownloadFailed as error:
            failures.append(str(error))
            if url != item.locations[-1]:
                hooks.say(f"{error}; trying the next URL")
    raise DownloadFailed("could not download the archive: " + "; ".join(failures))


def _parse_checksum(text: str) -> tuple[str, str]:
    algorithm, _, value = text.partition(":")
    return algorithm, value.lower()


def _unpack(obtained: _Obtained, staging: Path, official: bool, hooks: Hooks) -> None:
    kind = archive_kind(obtained.path)
    name = _file_name(obtained.origin)
    if kind is not None:
        hooks.say(f"extracting {name}")
        extract(obtained.path, staging, lambda done, total: hooks.progress(f"extract {name}", done, total))
    elif official:
        with open(obtained.path, "rb") as handle:
            head = handle.read(64)
        raise FetchError(f"{obtained.origin} did not give a zip or tar archive (it starts with {head!r}); "
                         "a login or virus-scan page instead of the file, or the wrong URL")
    elif obtained.downloaded:
        os.replace(obtained.path, staging / name)
    else:
        shutil.copy2(obtained.path, staging / name)


def count_problems(folder: Path, found: Inventory, expected: Expected) -> list[dict]:
    """One ``{"path", "problem"}`` per file the dataset's list names but lacks, and one for counts that differ."""
    problems = [{"path": str(path), "problem": f"missing (listed in {found.listing})"} for path in found.missing]
    if (len(found.images), found.classes) != (expected.images, expected.classes):
        problems.append({"path": str(folder), "problem": (
            f"{len(found.images):,} images in {found.classes:,} classes; expected {expected.images:,} in "
            f"{expected.classes:,} ({expected.origin})")})
    return problems


def _is_published(source: Source, item: Input, got: _Obtained, sums: dict[str, str], hooks: Hooks) -> bool:
    """Whether the file is the published archive; FetchError (and the download removed) for a download that
    stands for it but differs. A file given by hand may be a repack: the counts verify it."""
    if not source.checksum:
        return False
    algorithm, published = _parse_checksum(source.checksum)
    if sums[algorithm] == published:
        return True
    if item.official:
        if got.downloaded:
            got.path.unlink()
        raise FetchError(f"{got.origin}: {algorithm} is {sums[algorithm]}, expected {published} "
                         f"({source.checksum_from}); the download was removed and nothing was extracted")
    hooks.say(f"{got.origin} is not the published archive ({algorithm} differs): the file list and counts verify it")
    return False


def _build(source: Source, obtained: list[_Obtained], inputs: list[Input], tmp: Path, target: Path,
           expected: Expected, hooks: Hooks) -> tuple[Path, Inventory]:
    """Extract and convert the inputs into ``<tmp>/<name>``, which must hold the expected dataset."""
    staging = tmp / "staging"
    staging.mkdir()
    for got, item in zip(obtained, inputs):
        _unpack(got, staging, item.official, hooks)
    hooks.say(f"converting to the {source.name} layout")
    out = tmp / source.name
    try:
        source.convert(staging, out)
        found = source.inventory(out)
    except DatasetError as error:
        raise FetchError(f"the extracted files do not make a {source.name} dataset: {error}") from None
    problems = count_problems(out, found, expected)
    if problems:  # named by where they would have been installed: the temporary folder is removed
        shown = "; ".join(f"{p['path'].replace(str(out), str(target), 1)}: {p['problem']}" for p in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise FetchError(f"the files do not make the expected {source.name}: {shown}{more}")
    return out, found


def fetch(source: Source, root: str | os.PathLike, inputs: list[Input], *, expected: Expected,
          free_space: Callable[[Path], int], hooks: Hooks = Hooks()) -> dict:
    """Download (or take) the inputs, verify, extract and convert them, and install ``<root>/<name>``.

    Everything happens in ``<root>/.dmltui-tmp-<name>-*`` and the finished dataset folder is renamed into place, so
    ``<root>/<name>`` is complete or absent. The free space is checked before any request (from the estimates) and
    again once a server announces the archive's size. Returns the record written to ``<name>/.dmltui-source.json``.
    """
    root = Path(root)
    target = root / source.name
    if target.exists():
        raise FetchError(f"{target} already exists; check it with `dmltui data check {source.name}`, "
                         "or remove it to fetch it again")
    archive_bytes, extracted_bytes = estimates(source, expected)
    if all(item.local for item in inputs):  # the archives are here: their size is known, not estimated
        local_bytes = sum(Path(item.locations[0]).stat().st_size for item in inputs)
        extracted_bytes = math.ceil(local_bytes * source.extracted_bytes / source.archive_bytes)
    downloads = root / DOWNLOADS / source.name
    partial = sum(p.stat().st_size for p in downloads.glob("*.part")) if downloads.is_dir() else 0
    needed = extracted_bytes + (max(archive_bytes - partial, 0) if any(not i.local for i in inputs) else 0)
    _check_space(root, needed, f"{source.name} (archive and extracted files, estimated)", free_space)

    downloads.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / DOWNLOADS / f"{source.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FetchError(f"another fetch of {source.name} into {root} is running (lock {lock.lock_file})") from None
    obtained: list[_Obtained] = []
    try:
        if target.exists():  # installed by a fetch that held the lock meanwhile
            raise FetchError(f"{target} already exists; check it with `dmltui data check {source.name}`")
        for stale in root.glob(f"{TMP_PREFIX}{source.name}-*"):  # crashed fetches; only the lock holder gets here
            shutil.rmtree(stale, ignore_errors=True)
        files, published = [], False
        for item in inputs:
            got = _obtain(item, downloads, extracted_bytes, root, free_space, hooks)
            obtained.append(got)
            stage = f"sha256 {_file_name(got.origin)}"
            hooks.say(f"hashing {_file_name(got.origin)}")
            sums = digests(got.path, lambda done, total, stage=stage: hooks.progress(stage, done, total))
            files.append({"source": got.origin, "bytes": got.path.stat().st_size, **sums})
            published = _is_published(source, item, got, sums, hooks) or published
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{source.name}-", dir=root))
        try:
            out, found = _build(source, obtained, inputs, tmp, target, expected, hooks)
            record = {
                "dataset": source.name,
                "title": source.title,
                "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "files": files,
                # The counts and the dataset's own file list are always verified; a checksum only where published.
                "verified_by": _parse_checksum(source.checksum)[0] if published else "counts",
                "checksum": source.checksum if published else None,
                "checksum_from": source.checksum_from if published else None,
                "images": len(found.images),
                "classes": found.classes,
                "expected": {"images": expected.images, "classes": expected.classes, "origin": expected.origin},
            }
            (out / SOURCE_RECORD).write_text(json.dumps(record, indent=1) + "\n")
            os.rename(out, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for leftover in downloads.iterdir():  # installed: nothing left to resume
            leftover.unlink()
        return record
    finally:
        # A finished download that did not make a dataset is not kept (only .part files are, to resume from).
        for got in obtained:
            if got.downloaded:
                got.path.unlink(missing_ok=True)
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
        lock.release()


# ------------------------------------------------------------------ check, describe, present


def decode_problem(path: str) -> str | None:
    """Why an image file does not decode, or None. JPEGs decode at 1/8 scale: every byte is still read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))
            image.load()
    except Exception as error:  # a broken file raises anything from OSError to SyntaxError inside PIL's plugins
        return f"cannot decode: {error}"
    return None


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent handles it


def _decode_chunk(paths: list[str]) -> list[tuple[str, str]]:
    return [(path, problem) for path in paths if (problem := decode_problem(path)) is not None]


def decode_problems(paths: list[Path], *, workers: int,
                    progress: Callable[[int, int | None], None] = lambda done, total: None) -> list[tuple[Path, str]]:
    """(path, problem) for every image that does not decode, checked by *workers* processes."""
    if not paths:
        return []
    size = max(1, min(256, len(paths) // (workers * 4) or 1))
    chunks = [[str(p) for p in paths[i : i + size]] for i in range(0, len(paths), size)]
    problems: list[tuple[Path, str]] = []
    # spawn: the caller may run threads (a progress display), which fork would copy in an unknown state.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_interrupts)
    try:
        futures = {pool.submit(_decode_chunk, chunk): len(chunk) for chunk in chunks}
        done = 0
        for future in as_completed(futures):
            problems += [(Path(path), problem) for path, problem in future.result()]
            done += futures[future]
            progress(done, len(paths))
    finally:
        pool.shutdown(cancel_futures=True)  # an interrupted check stops after the chunks being decoded
    return sorted(problems)


def read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return None


def check(source: Source, root: str | os.PathLike | None, *, expected: Expected, workers: int,
          hooks: Hooks = Hooks()) -> dict:
    """Layout, counts and the decoding of every image of ``<root>/<name>``; ``ok`` when no problem was found."""
    folder = data_root(root) / source.name
    report = {"name": source.name, "path": str(folder), "images": None, "classes": None, "decoded": 0,
              "expected": {"images": expected.images, "classes": expected.classes, "origin": expected.origin},
              "problems": []}
    if not folder.is_dir():
        report["problems"].append({"path": str(folder), "problem": f"does not exist; fetch it with `dmltui data fetch {source.name}`"})
    else:
        try:
            found = source.inventory(folder)
        except DatasetError as error:
            report["problems"].append({"path": str(folder), "problem": str(error)})
        else:
            report.update(images=len(found.images), classes=found.classes)
            report["problems"] += count_problems(folder, found, expected)
            missing = set(found.missing)
            present = [path for path in found.images if path not in missing]
            hooks.say(f"decoding {len(present):,} images of {source.name} with {workers} process(es)")
            failures = decode_problems(present, workers=workers,
                                       progress=lambda done, total: hooks.progress(f"decode {source.name}", done, total))
            report["decoded"] = len(present) - len(failures)
            report["problems"] += [{"path": str(path), "problem": problem} for path, problem in failures]
    report["ok"] = not report["problems"]
    return report


def _tree_bytes(folder: Path, skip: str | None = None) -> int:
    total = 0
    for entry in os.scandir(folder):
        if entry.name == skip:
            continue
        if entry.is_dir(follow_symlinks=False):
            total += _tree_bytes(Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_size
    return total


def describe(source: Source, root: str | os.PathLike | None) -> dict:
    """Whether ``<root>/<name>`` is there and readable, its counts and bytes, its source record and image cache."""
    folder = data_root(root) / source.name
    entry = {"name": source.name, "title": source.title, "path": str(folder), "present": folder.is_dir(),
             "problem": None, "images": None, "classes": None, "bytes": None, "verified": False, "verified_by": None,
             "fetched_at": None, "cache": False, "cache_bytes": 0}
    if not entry["present"]:
        return entry
    try:
        found = source.inventory(folder)
        entry.update(images=len(found.images), classes=found.classes)
    except DatasetError as error:
        entry["problem"] = str(error)
    entry["bytes"] = _tree_bytes(folder, skip=CACHE_DIRNAME)
    record = read_record(folder)
    if record is not None:
        entry.update(verified=True, verified_by=record.get("verified_by"), fetched_at=record.get("fetched_at"))
    cache = folder / CACHE_DIRNAME
    if cache.is_dir():
        entry.update(cache=True, cache_bytes=_tree_bytes(cache))
    return entry


def present(name: str, root: str | os.PathLike | None = None) -> bool:
    """Whether ``<root>/<name>`` has the layout its loader reads (folder listings and headers only: cheap)."""
    folder = data_root(root) / name
    try:
        SOURCES.get(name).layout(folder)
    except DatasetError:
        return False
    return True
