"""The pre-resized image cache (data.cache = "resized"): contents, invalidation, crash safety, concurrency, training."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_class_folders
from PIL import Image

from engine import trainer
from engine.config.presets import ConfigError, resolve
from engine.data import DatasetError, ImageDataset, build_transform, create_splits, ensure_image_cache, open_split_cache
from engine.data import cache as cache_module
from engine.data.cache import CACHE_DIRNAME, default_cache_size, resize_shorter_side
from engine.data.folder import load_rgb
from engine.rundir import RunDir

SIZE = 32  # tiny_cub images are 40 x 48: the cache shrinks them to 32 x 38


def cache_dirs(root: Path) -> list[Path]:
    folder = root / "cub200" / CACHE_DIRNAME
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def test_cached_images_equal_the_resized_decoded_images(tiny_cub):
    splits = create_splits("cub200", tiny_cub)
    cache = open_split_cache(splits, SIZE)
    assert cache.built and len(cache) == len(splits.train) + len(splits.test) == 96
    assert cache.directory.parent == tiny_cub / "cub200" / CACHE_DIRNAME
    for path in splits.train.paths + splits.test.paths:
        cached = cache.read(int(cache.rows_of([path])[0]))
        expected = resize_shorter_side(load_rgb(path), SIZE)
        assert cached.dtype == torch.uint8 and cached.shape == (3, 32, 38)
        assert torch.equal(cached, expected)

    # The dataset feeds the same transforms: identical to transforming the resized decoded image.
    transform = build_transform("base", 24, train=False)
    dataset = ImageDataset(splits.test, transform, image_cache=cache)
    image, label, index = dataset[5]
    assert torch.equal(image, transform(resize_shorter_side(load_rgb(splits.test.paths[5]), SIZE)))
    assert (label, index) == (splits.test.labels[5], 5)
    train = ImageDataset(splits.train, build_transform("base", 24, train=True), image_cache=cache)
    assert train[0][0].shape == (3, 24, 24)

    # Reopened without rebuilding; images already small enough are stored as they are.
    again = open_split_cache(splits, SIZE)
    assert not again.built and again.directory == cache.directory
    large = open_split_cache(splits, 64)
    assert large.built and torch.equal(large.read(0), load_rgb(sorted(splits.train.paths + splits.test.paths)[0]))
    assert default_cache_size(224) == 256


def test_a_memmapped_dataset_pickles_without_its_map_and_reads_in_worker_processes(tiny_cub):
    splits = create_splits("cub200", tiny_cub)
    dataset = ImageDataset(splits.train, build_transform("none", 16, train=False), image_cache=open_split_cache(splits, SIZE))
    first = dataset[3][0]
    assert dataset.image_cache._pixels is not None
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.image_cache._pixels is None and torch.equal(copy[3][0], first)
    # Workers of a dataset the parent never read from map the file themselves.
    fresh = pickle.loads(pickle.dumps(dataset))
    loader = torch.utils.data.DataLoader(fresh, batch_size=8, num_workers=2)
    images = torch.cat([batch[0] for batch in loader])
    assert torch.equal(images[3], first) and len(images) == len(dataset)
    assert fresh.image_cache._pixels is None


def test_a_changed_folder_rebuilds_and_drops_the_stale_cache(tiny_cub):
    splits = create_splits("cub200", tiny_cub)
    old = open_split_cache(splits, SIZE)
    changed = splits.train.paths[0]
    Image.fromarray(np.full((40, 48, 3), 7, dtype=np.uint8)).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new mtime even on coarse clocks
    new = open_split_cache(splits, SIZE)
    assert new.built and new.directory != old.directory
    assert cache_dirs(tiny_cub) == [new.directory]
    assert torch.equal(new.read(int(new.rows_of([changed])[0])), resize_shorter_side(load_rgb(changed), SIZE))

    make_class_folders(tiny_cub / "cub200" / "images", 8, 13)  # one more image per class
    grown = open_split_cache(create_splits("cub200", tiny_cub), SIZE)
    assert grown.built and len(grown) == 104 and cache_dirs(tiny_cub) == [grown.directory]


def test_a_crashed_or_partial_build_is_never_used(tiny_cub, monkeypatch):
    splits = create_splits("cub200", tiny_cub)
    calls = []

    def crash_after_five(image, size):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("disk on fire")
        return resize_shorter_side(image, size)

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "resize_shorter_side", crash_after_five)
        with pytest.raises(RuntimeError, match="disk on fire"):
            open_split_cache(splits, SIZE)
    folder = tiny_cub / "cub200" / CACHE_DIRNAME
    assert list(folder.iterdir()) == [folder / f"{SIZE}px.lock"]  # the temporary directory was removed

    # A killed builder leaves its temporary directory; a damaged final directory fails validation.
    good = open_split_cache(splits, SIZE)
    leftover = folder / f".tmp-{SIZE}px-killed"
    leftover.mkdir()
    (leftover / "pixels.u8").write_bytes(b"\0" * 100)
    with open(good.directory / "pixels.u8", "r+b") as handle:
        handle.truncate(1000)
    rebuilt = open_split_cache(splits, SIZE)
    assert rebuilt.built and rebuilt.directory == good.directory and not leftover.exists()
    path = splits.test.paths[-1]
    assert torch.equal(rebuilt.read(int(rebuilt.rows_of([path])[0])), resize_shorter_side(load_rgb(path), SIZE))


def _build_in_child(paths, root, start, results):
    start.wait()
    cache = ensure_image_cache(paths, root, SIZE)
    results.put((str(cache.directory), cache.built, cache.read(0).sum().item()))


def test_two_concurrent_builders_build_one_valid_cache(tiny_cub, monkeypatch):
    splits = create_splits("cub200", tiny_cub)
    original = cache_module._build

    def slow_build(*args, **kwargs):
        import time

        time.sleep(0.5)  # both processes are surely inside ensure_image_cache by now
        return original(*args, **kwargs)

    monkeypatch.setattr(cache_module, "_build", slow_build)
    context = multiprocessing.get_context("fork")  # inherits the patched module
    start, results = context.Event(), context.Queue()
    paths = splits.train.paths + splits.test.paths
    children = [context.Process(target=_build_in_child, args=(paths, tiny_cub / "cub200", start, results)) for _ in range(2)]
    for child in children:
        child.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert sorted(built for _, built, _ in outcomes) == [False, True]
    assert len({directory for directory, _, _ in outcomes}) == 1 and len({total for _, _, total in outcomes}) == 1
    assert [str(p) for p in cache_dirs(tiny_cub)] == [outcomes[0][0]]
    assert not ensure_image_cache(paths, tiny_cub / "cub200", SIZE).built


def test_a_training_run_with_the_cache_on(tiny_cub, tmp_path):
    overrides = [
        "data.dataset=cub200", f"data.source_path={str(tiny_cub)!r}", "data.cache='resized'", "data.image_size=32",
        "data.augmentation='base'", "data.in_memory=false", "data.workers=1", "optim.epochs=1", "sampler.batch_size=16",
        "sampler.samples_per_class=4", "eval.metrics=['e_recall@1']", "eval.at_start=false", "eval.raw_pixel_baseline=false",
    ]
    config = resolve(["quickstart"], overrides).config
    outcome = trainer.run(config, tmp_path / "run", show_progress=False)
    assert outcome.state == "finished", outcome.error
    [directory] = cache_dirs(tiny_cub)
    assert directory.name.startswith(f"{default_cache_size(32)}px-")
    assert f"image cache: {directory}" in RunDir(tmp_path / "run").log.read_text()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.cache='yes'", "data.cache = 'yes': Input should be 'off' or 'resized'"),
        ("data.cache=true", "data.cache = True: Input should be 'off' or 'resized'"),
        ("data.cache_size=4", "data.cache_size = 4: Input should be greater than or equal to 8"),
        ("data.cache_size='big'", "data.cache_size = 'big': Input should be a valid integer"),
        ("data.cache_dir=3", "data.cache_dir = 3: Input should be a valid string"),
    ],
)
def test_bad_cache_settings_are_one_line_errors_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as caught:
        resolve(["quickstart"], [override])
    assert expected in str(caught.value)
    assert all("\n" not in line for line in caught.value.lines)


def test_a_cache_smaller_than_the_input_or_unwritable_is_an_error(tiny_cub, tmp_path):
    with pytest.raises(ConfigError, match=r"data.cache_size=16 is smaller than data.image_size=32"):
        resolve(["quickstart"], ["data.image_size=32", "data.cache_size=16"])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(DatasetError, match=r"cannot write to .*a-file/cache.*; set data.cache_dir to a writable folder"):
        open_split_cache(create_splits("cub200", tiny_cub), SIZE, blocker / "cache")
