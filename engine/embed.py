"""Embed images with a trained run: a split of its dataset, a folder, or a list of image files.

::

    from engine.embed import embed
    test = embed("runs/20261102-120000-0000", "test")               # the best checkpoint, the test split
    new = embed("runs/.../checkpoints/last.pt", ["a.jpg", "b.png"])  # any checkpoint file, any images
    test.vectors, test.labels, test.paths, test.class_names

The model is rebuilt from the run's config (``config.toml`` beside ``checkpoints/``, else
the config stored in the checkpoint) and gets the checkpoint's weights; the images go
through the run's *evaluation* transform (and its resized-image cache when the run used
one), in eval mode, under the run's AMP setting, in batches of ``eval.batch_size`` (else
``sampler.batch_size``) through :func:`engine.evaluation.embed_dataset`: the same path the
trainer evaluates with, so a split embedded here gives the logged metrics. It runs on the
GPU when there is one (``device="auto"``).

A split embedded from a run directory is cached in ``<run>/embeddings/<split>-<checkpoint>.npz``
(vectors, labels, image paths, class names and the checkpoint's fingerprint), written
atomically. The cache is used while the checkpoint is the same file: same size, mtime and
inode, or, when one of those changed, the same SHA-256 of its bytes (a copy); otherwise it
is recomputed. The fingerprint is taken from the very bytes the weights are loaded from,
so a checkpoint rewritten meanwhile cannot pass for the one that was embedded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tomllib
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.data import IMAGE_SUFFIXES, DatasetError, read_class_folders
from engine.io import atomic_write_bytes

CACHE_DIR = "embeddings"
CACHE_VERSION = 1
SPLITS = ("test", "val", "train")
NAMED_CHECKPOINTS = ("best", "last")

Progress = Callable[[int, int], None]


class EmbedError(ValueError):
    """A checkpoint, split or image source that cannot be embedded; the message is one line naming it."""


class CheckpointNotFound(EmbedError):
    """The checkpoint asked for does not exist (yet)."""


@dataclass
class Checkpoint:
    """A checkpoint file, the config that built its model and the run directory it belongs to (if any)."""

    path: Path
    name: str  # "best", "last", or the file's stem
    config: Any  # engine.config.schema.Config
    run_dir: Path | None


@dataclass
class Embeddings:
    vectors: np.ndarray  # N × D float32
    labels: np.ndarray  # N int64, positions in class_names; −1 for an image of no known class
    paths: list[str]
    class_names: list[str]
    checkpoint: dict[str, Any]  # name, path, epoch, fingerprint
    split: str | None = None
    cached: bool = False  # read from the cache rather than computed
    cache_path: Path | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.paths)


# ------------------------------------------------------------------------------------------- checkpoints


def _load_config(run_dir: Path):
    from engine.config.presets import ConfigError, flatten, validate_tree

    config_file = run_dir / "config.toml"
    try:
        with config_file.open("rb") as handle:
            tree = tomllib.load(handle)
        return validate_tree(tree, dict.fromkeys(flatten(tree), str(config_file)))
    except tomllib.TOMLDecodeError as error:
        raise EmbedError(f"{config_file}: not valid TOML: {error}") from None
    except ConfigError as error:
        raise EmbedError(error.lines[0] if getattr(error, "lines", None) else str(error)) from None


def best_checkpoint(run_dir: Path, config) -> Path:
    """The run's best checkpoint: ``best_<selection split>_<metric>.pt`` of its first storage metric that exists."""
    split = "val" if config.data.use_tv_split or config.data.folds else "test"
    names = [f"best_{split}_{metric}.pt" for metric in config.eval.storage_metrics]
    for name in names:
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    present = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").is_dir() else []
    raise CheckpointNotFound(f"{run_dir / 'checkpoints'} has no best checkpoint ({', '.join(names) or 'no storage metric'}); "
                     f"present: {', '.join(present) or 'none'}")


def checkpoint_choice(path: str | os.PathLike) -> dict[str, str] | None:
    """How the trainer chose a best checkpoint, read from its name ``best_<split>_<metric>.pt``: ``{"split",
    "metric"}``; None for any other file (``last.pt``, an exported model)."""
    stem = Path(path).stem
    for split in ("val", "test"):
        prefix = f"best_{split}_"
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return {"split": split, "metric": stem[len(prefix):]}
    return None


def resolve_checkpoint(source: str | os.PathLike, checkpoint: str | os.PathLike = "best") -> Checkpoint:
    """*source*: a run directory (with config.toml) or a checkpoint file; *checkpoint*: best, last or a file path
    (used when *source* is a run directory). Raises EmbedError."""
    source = Path(source)
    if source.is_dir():
        if not (source / "config.toml").is_file():
            raise EmbedError(f"{source} is not a run directory (no config.toml)")
        run_dir = source
        if str(checkpoint) == "best":
            config = _load_config(run_dir)
            return Checkpoint(best_checkpoint(run_dir, config), "best", config, run_dir)
        if str(checkpoint) == "last":
            path = run_dir / "checkpoints" / "last.pt"
            if not path.is_file():
                raise CheckpointNotFound(f"{path} does not exist: the run has not finished an epoch")
            return Checkpoint(path, "last", _load_config(run_dir), run_dir)
        path = Path(checkpoint)
    else:
        path = source
    if not path.is_file():
        raise CheckpointNotFound(f"checkpoint {path} does not exist (give best, last or a checkpoint file)")
    owner = path.resolve().parent.parent
    run_dir = owner if path.resolve().parent.name == "checkpoints" and (owner / "config.toml").is_file() else None
    config = _load_config(run_dir) if run_dir is not None else None  # else: read from the checkpoint itself
    return Checkpoint(path, path.stem, config, run_dir)


def file_stat(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def same_checkpoint(fingerprint: dict[str, Any], path: Path) -> bool:
    """Whether *path* still holds the checkpoint *fingerprint* was taken of (stat first, SHA-256 when it moved)."""
    try:
        stat = file_stat(path)
    except OSError:
        return False
    if all(fingerprint.get(key) == value for key, value in stat.items()):
        return True
    if fingerprint.get("size") != stat["size"]:
        return False
    return hashlib.sha256(path.read_bytes()).hexdigest() == fingerprint.get("sha256")


def load_checkpoint(ckpt: Checkpoint) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the checkpoint's state, its fingerprint), from one read of the file."""
    import torch

    with open(ckpt.path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        data = handle.read()
    fingerprint = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino,
                   "sha256": hashlib.sha256(data).hexdigest()}
    try:
        # the trainer's own checkpoints hold RNG states (numpy arrays), which weights_only refuses
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file: one line
        raise EmbedError(f"{ckpt.path} is not a readable checkpoint ({type(error).__name__}: "
                         f"{str(error).strip().splitlines()[0] if str(error).strip() else 'no detail'})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise EmbedError(f"{ckpt.path} is not a dmltui checkpoint (no 'model' state)")
    if ckpt.config is None:
        from engine.config.schema import Config

        if "config" not in state:
            raise EmbedError(f"{ckpt.path} records no config and is not inside a run directory")
        ckpt.config = Config.model_validate(state["config"])
    return state, fingerprint


def build_model(config, state: dict[str, Any]):
    """The run's embedding model (on the CPU, eval mode) with the checkpoint's weights."""
    from engine.models import from_config

    model = from_config(config, pretrained=False)
    model.load_state_dict(state["model"])
    return model.eval()


def input_size(config) -> int:
    """The side of the network's input, as the trainer sizes it."""
    from engine.models import input_spec

    return input_spec(config).size


def eval_transform(config):
    from engine.models import input_spec

    return input_spec(config).transform(config.data.augmentation, train=False)


def resolve_device(device: str | None):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise EmbedError(f"device {device!r}: this machine has no CUDA device")
    return torch.device(device)


# ------------------------------------------------------------------------------------------- images


def split_images(config, split: str):
    """The ImageList of a split of the run's dataset, as the trainer built it."""
    from engine.data import splits_of

    if split not in SPLITS:
        raise EmbedError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    data = config.data
    try:
        splits = splits_of(data)
    except DatasetError as error:
        raise EmbedError(str(error)) from None
    images = getattr(splits, split)
    if images is None:
        raise EmbedError(f"the run has no {split} split (it has no data.use_tv_split or data.folds)")
    return splits, images


def image_list(source: str | os.PathLike | Sequence[str | os.PathLike]):
    """An ImageList of a folder of class folders (labelled by folder), a flat folder or a list of files (label −1)."""
    from engine.data.folder import ImageList

    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise EmbedError(f"{folder} is neither a split ({', '.join(SPLITS)}) nor a folder of images")
        if any(p.is_dir() for p in folder.iterdir()):
            try:
                classes = read_class_folders(folder)
            except DatasetError as error:
                raise EmbedError(str(error)) from None
            paths = [p for _, files in classes for p in files]
            labels = [label for label, (_, files) in enumerate(classes) for _ in files]
            return ImageList(paths, np.asarray(labels, dtype=np.int64), [name for name, _ in classes])
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise EmbedError(f"{folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    else:
        files = [Path(p) for p in source]
        missing = next((p for p in files if not p.is_file()), None)
        if missing is not None:
            raise EmbedError(f"image {missing} does not exist")
        if not files:
            raise EmbedError("no images given")
    return ImageList(files, np.full(len(files), -1, dtype=np.int64), [])


# ------------------------------------------------------------------------------------------- cache


def cache_path(run_dir: Path, split: str, checkpoint_name: str) -> Path:
    return run_dir / CACHE_DIR / f"{split}-{checkpoint_name}.npz"


def read_cache(path: Path, checkpoint_path: Path) -> Embeddings | None:
    """The cached embeddings when *path* holds them for the checkpoint now at *checkpoint_path*, else None."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("version") != CACHE_VERSION or not same_checkpoint(meta["checkpoint"]["fingerprint"],
                                                                           checkpoint_path):
                return None
            return Embeddings(vectors=data["vectors"], labels=data["labels"], paths=data["paths"].tolist(),
                              class_names=meta["class_names"], checkpoint=meta["checkpoint"], split=meta["split"],
                              cached=True, cache_path=path)
    except (OSError, ValueError, KeyError, json.JSONDecodeError):  # absent, torn or foreign: recompute
        return None


def write_cache(path: Path, result: Embeddings) -> None:
    meta = {"version": CACHE_VERSION, "split": result.split, "checkpoint": result.checkpoint,
            "class_names": result.class_names}
    buffer = io.BytesIO()
    np.savez(buffer, vectors=result.vectors, labels=result.labels, paths=np.asarray(result.paths, dtype=str),
             meta=np.asarray(json.dumps(meta)))
    atomic_write_bytes(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------- embedding


def embed(
    source: str | os.PathLike | Checkpoint,
    images: str | os.PathLike | Sequence[str | os.PathLike] = "test",
    *,
    checkpoint: str | os.PathLike = "best",
    device: str | None = "auto",
    batch_size: int | None = None,
    progress: Progress | None = None,
    use_cache: bool = True,
) -> Embeddings:
    """Embeddings of *images* with a run's checkpoint (see the module doc).

    *source*: a run directory, a checkpoint file or a resolved :class:`Checkpoint`. *images*: a split name (test, val,
    train), a folder (of class folders, or of image files) or a list of image files.
    *checkpoint*: best, last or a checkpoint file, for a run directory. *progress* is
    called with (images done, images) after each batch. A split of a run directory is
    read from / written to the cache unless *use_cache* is false. Raises EmbedError.
    """
    import torch

    from engine.data import ImageDataset
    from engine.evaluation import embed_dataset

    ckpt = source if isinstance(source, Checkpoint) else resolve_checkpoint(source, checkpoint)
    is_split = isinstance(images, str) and images in SPLITS
    cache = cache_path(ckpt.run_dir, images, ckpt.name) if is_split and ckpt.run_dir is not None else None
    if cache is not None and use_cache:
        hit = read_cache(cache, ckpt.path)
        if hit is not None:
            return hit
    state, fingerprint = load_checkpoint(ckpt)
    config = ckpt.config
    target = resolve_device(device)
    model = build_model(config, state).to(target)
    if config.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    image_cache = None
    if is_split:
        splits, chosen = split_images(config, images)
        if config.data.cache == "resized":  # the pixels the trainer evaluated
            from engine.data import default_cache_size, open_split_cache

            size = config.data.cache_size or default_cache_size(input_size(config))
            image_cache = open_split_cache(splits, size, config.data.cache_dir, workers=config.data.workers)
    else:
        chosen = image_list(images)
    dataset = ImageDataset(chosen, eval_transform(config), image_cache=image_cache)
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.run.amp]
    autocast = torch.autocast(device_type=target.type, dtype=amp) if amp is not None else nullcontext()
    with autocast:
        vectors, _ = embed_dataset(model, dataset, batch_size=batch_size or config.eval.batch_size or config.sampler.batch_size,
                                   device=target, workers=min(config.data.workers, os.cpu_count() or 1),
                                   channels_last=config.run.channels_last, progress=progress)
    result = Embeddings(
        vectors=vectors.numpy().astype(np.float32, copy=False), labels=np.asarray(chosen.labels, dtype=np.int64),
        paths=[str(p) for p in chosen.paths], class_names=list(chosen.class_names),
        checkpoint={"name": ckpt.name, "path": str(ckpt.path.resolve()), "epoch": state.get("epoch"),
                    "fingerprint": fingerprint},
        split=images if is_split else None,
    )
    if cache is not None:
        write_cache(cache, result)
        result.cache_path = cache
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.embed RUN [--split S] [--checkpoint C] [--device D]``: embed a split into the run's cache.

    Prints ``progress DONE TOTAL`` after each batch and ``cache PATH`` at the end (what the TUI's worker reads, so
    that the embedding runs outside the TUI's interpreter); an error is one ``error:`` line on stderr, exit 2.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m engine.embed", description="Embed a run's split into its cache.")
    parser.add_argument("source", help="a run directory or a checkpoint file inside one")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--checkpoint", default="best", help="best, last or a checkpoint file")
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu or cuda")
    args = parser.parse_args(argv)

    def progress(done: int, total: int) -> None:
        print(f"progress {done} {total}", flush=True)

    try:
        result = embed(args.source, args.split, checkpoint=args.checkpoint, device=args.device, progress=progress)
    except EmbedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"cache {result.cache_path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
