"""DeepFashion In-Shop Clothes Retrieval (Liu et al., CVPR 2016), in its published layout.

Layout (``dmltui data fetch in_shop`` puts the two downloads side by side)::

    <root>/in_shop/img/<MEN|WOMEN>/<category>/<item id>/<image file>
    <root>/in_shop/list_eval_partition.txt     image count, header, then 'image_name item_id evaluation_status'

The classes are the item ids. ``train`` rows train (25,882 images of 3,997 items); the test split is the
``query`` rows (14,218) followed by the ``gallery`` rows (12,612), 3,985 items between them, and it is
evaluated as the benchmark defines it: every query ranks the gallery, never the other queries
(``ImageList.query``/``gallery``). A validation split takes the last training items (or, by samples,
some images of every item) and is evaluated all-against-all.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from engine.data import DatasetError
from engine.data.folder import ImageList, Splits, image_list, split_by_classes, split_by_samples
from engine.data.sources import INSHOP_LAYOUT_HELP, INSHOP_PARTITION, read_inshop_partition


def _by_item(rows: list[tuple[str, Path]]) -> list[tuple[str, list[Path]]]:
    """(item id, image paths in file order) pairs, sorted by item id."""
    items: dict[str, list[Path]] = defaultdict(list)
    for item, path in rows:
        items[item].append(path)
    return sorted(items.items())


def query_gallery_list(query: list[tuple[str, Path]], gallery: list[tuple[str, Path]]) -> ImageList:
    """The queries, then the gallery, labelled by item over both, with the rows of each side."""
    names = sorted({item for item, _ in query} | {item for item, _ in gallery})
    label_of = {name: label for label, name in enumerate(names)}
    rows = query + gallery
    return ImageList(
        paths=[path for _, path in rows],
        labels=np.asarray([label_of[item] for item, _ in rows], dtype=np.int64),
        class_names=names,
        query=np.arange(len(query), dtype=np.int64),
        gallery=np.arange(len(query), len(rows), dtype=np.int64),
    )


def load_inshop(root: Path, *, use_tv_split: bool, by_samples: bool, fraction: float) -> Splits:
    partition = read_inshop_partition(root)
    missing = next((path for _, _, path in partition if not path.is_file()), None)
    if missing is not None:
        raise DatasetError(f"{root / INSHOP_PARTITION} lists {missing}, which does not exist; {INSHOP_LAYOUT_HELP}")
    by_status: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for item, status, path in partition:
        by_status[status].append((item, path))
    for status in ("train", "query", "gallery"):
        if not by_status[status]:
            raise DatasetError(f"{root / INSHOP_PARTITION} has no '{status}' rows; {INSHOP_LAYOUT_HELP}")
    train_items = _by_item(by_status["train"])
    val = None
    if use_tv_split:
        splitter = split_by_samples if by_samples else split_by_classes
        train_items, val_items = splitter(train_items, fraction)
        val = image_list(val_items)
    test = query_gallery_list(by_status["query"], by_status["gallery"])
    return Splits(train=image_list(train_items), test=test, val=val)
