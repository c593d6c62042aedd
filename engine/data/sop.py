"""Stanford Online Products: images/<super>_final/<file> plus Info_Files/Ebay_{train,test}.txt.

The info files are space-delimited with a header ``image_id class_id super_class_id path``;
``path`` is relative to ``images/``. Labels are the class ids (re-indexed per split).
Validation split by classes keeps, inside each super-class, the first classes for
training (the original shifted these labels to -1..n-2; ours are 0..n-1).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from engine.data import SOP_LAYOUT_HELP, DatasetError, read_sop_rows
from engine.data.folder import ImageList, Splits, image_list, split_by_samples


def read_info_file(root: Path, name: str) -> list[tuple[int, int, Path]]:
    """(class_id, super_class_id, image path) rows of one Ebay_*.txt file, every image checked to exist."""
    rows = read_sop_rows(root, name)
    info = root / "Info_Files" / name
    if not rows:
        raise DatasetError(f"{info} lists no images")
    missing = next((p for _, _, p in rows if not p.is_file()), None)
    if missing is not None:
        raise DatasetError(f"{info} lists {missing}, which does not exist; {SOP_LAYOUT_HELP}")
    return rows


def _classes(rows: list[tuple[int, int, Path]]) -> tuple[list[tuple[str, list[Path]]], dict[str, int]]:
    by_class: dict[int, list[Path]] = defaultdict(list)
    super_of: dict[str, int] = {}
    for class_id, super_id, path in rows:
        by_class[class_id].append(path)
        super_of[str(class_id)] = super_id
    return [(str(c), by_class[c]) for c in sorted(by_class)], super_of


def load_sop(root: Path, *, use_tv_split: bool, by_samples: bool, fraction: float) -> Splits:
    train_classes, super_of = _classes(read_info_file(root, "Ebay_train.txt"))
    test_classes, _ = _classes(read_info_file(root, "Ebay_test.txt"))
    val: ImageList | None = None
    if use_tv_split:
        if by_samples:
            train_classes, val_classes = split_by_samples(train_classes, fraction)
        else:
            per_super: dict[int, list] = defaultdict(list)
            for entry in train_classes:
                per_super[super_of[entry[0]]].append(entry)
            train_classes, val_classes = [], []
            for super_id in sorted(per_super):
                members = per_super[super_id]
                cut = int(fraction * len(members))
                train_classes += members[:cut]
                val_classes += members[cut:]
        val = image_list(val_classes)
    return Splits(train=image_list(train_classes), test=image_list(test_classes), val=val)
