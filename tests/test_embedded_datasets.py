"""The embedded datasets (glyphs, digits): layout, determinism, homoglyph rule, split, install."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data import embedded as E

FOLDER_RE = re.compile(r"^\d{3}\.[a-z0-9_]+$")


@pytest.fixture(scope="module")
def glyphs_dir(tmp_path_factory) -> Path:
    return E.ensure_embedded("glyphs", tmp_path_factory.mktemp("glyphs_root"), seed=0)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    return E.ensure_embedded("digits", tmp_path_factory.mktemp("digits_root"))


def _class_folders(ds: Path) -> list[Path]:
    folders = [p for p in (ds / "images").iterdir() if p.is_dir()]
    return sorted(folders, key=lambda p: int(p.name.split(".", 1)[0]))


def _check_layout(ds: Path, size: int) -> dict[str, int]:
    """Checks folder names, contiguous numbering and every PNG; returns images per class."""
    folders = _class_folders(ds)
    names = [p.name for p in folders]
    assert all(FOLDER_RE.match(n) for n in names), names
    assert [int(n[:3]) for n in names] == list(range(1, len(names) + 1))
    assert sorted(p.name for p in (ds / "images").iterdir()) == sorted(names)  # nothing else in images/
    counts = {}
    for folder in folders:
        files = sorted(folder.iterdir())
        for f in files:
            assert f.suffix == ".png"
            with Image.open(f) as im:
                assert im.format == "PNG" and im.mode == "L" and im.size == (size, size), f
        counts[folder.name] = len(files)
    manifest = json.loads((ds / E.MANIFEST_NAME).read_text())
    assert manifest["classes"] == names
    assert manifest["n_classes"] == len(names)
    assert manifest["n_images"] == sum(counts.values())
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["sha256"])
    return counts


def _alphabet(folder_name: str) -> str:
    return folder_name.split(".", 1)[1].split("_", 1)[0]


# --------------------------------------------------------------------------- layout


def test_glyphs_layout(glyphs_dir):
    counts = _check_layout(glyphs_dir, 32)
    assert len(counts) >= 150
    assert set(counts.values()) == {20}
    assert glyphs_dir == glyphs_dir.parent / "glyphs"
    m = E.read_manifest(glyphs_dir)
    assert m["name"] == "glyphs" and m["seed"] == 0 and m["version"] == E.EMBEDDED_DATASETS["glyphs"].version
    assert m["n_classes"] == E.EMBEDDED_DATASETS["glyphs"].n_classes_now()


def test_glyph_images_are_not_blank(glyphs_dir):
    folder = _class_folders(glyphs_dir)[0]
    for f in sorted(folder.iterdir()):
        arr = np.asarray(Image.open(f), dtype=np.float32)
        # light glyph on a dark, noisy background
        assert np.median(arr) < 40 and arr.max() > 150


def test_digits_layout_and_pixels(digits_dir):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    counts = _check_layout(digits_dir, 8)
    names = list(counts)
    assert names == [f"{d + 1:03d}.digit_{d}" for d in range(10)]
    expected = Counter(int(t) for t in bunch.target)
    assert [counts[n] for n in names] == [expected[d] for d in range(10)]
    assert sum(counts.values()) == 1797

    scaled = np.rint(bunch.images * 255.0 / 16.0).astype(np.uint8)
    seen = set()
    for d, folder in enumerate(_class_folders(digits_dir)):
        for f in folder.iterdir():
            assert re.fullmatch(r"\d{4}\.png", f.name)
            i = int(f.stem)
            seen.add(i)
            assert bunch.target[i] == d
            np.testing.assert_array_equal(np.asarray(Image.open(f)), scaled[i])
    assert seen == set(range(1797))
    assert E.read_manifest(digits_dir)["seed"] is None  # the seed does not change digits


# --------------------------------------------------------------------------- determinism


def test_glyphs_deterministic(glyphs_dir, tmp_path):
    again = E.ensure_embedded("glyphs", tmp_path / "a", seed=0)
    assert E.read_manifest(again) == E.read_manifest(glyphs_dir)
    some = sorted((glyphs_dir / "images").rglob("*.png"))[::157]
    for f in some:
        assert (again / f.relative_to(glyphs_dir)).read_bytes() == f.read_bytes()

    other = E.ensure_embedded("glyphs", tmp_path / "b", seed=1)
    m0, m1 = E.read_manifest(glyphs_dir), E.read_manifest(other)
    assert m1["seed"] == 1 and m1["sha256"] != m0["sha256"]
    assert sorted(c[4:] for c in m1["classes"]) == sorted(c[4:] for c in m0["classes"])  # same characters
    assert m1["classes"] != m0["classes"]  # numbered in another order


def test_digits_deterministic_and_seed_free(digits_dir, tmp_path):
    again = E.ensure_embedded("digits", tmp_path, seed=5)
    assert E.read_manifest(again)["sha256"] == E.read_manifest(digits_dir)["sha256"]
    # an existing digits copy is accepted whatever the seed
    before = (again / E.MANIFEST_NAME).stat().st_mtime_ns
    assert E.ensure_embedded("digits", tmp_path, seed=0) == again
    assert (again / E.MANIFEST_NAME).stat().st_mtime_ns == before


# --------------------------------------------------------------------------- homoglyphs and alphabets


def test_homoglyph_table_is_well_formed():
    seen: set[str] = set()
    for group in E.HOMOGLYPH_GROUPS:
        assert len(group) >= 2 and len(set(group)) == len(group), group
        assert not (seen & set(group)), group
        seen |= set(group)
    group_of = {ch: g for g in E.HOMOGLYPH_GROUPS for ch in g}
    # pairs named in the spec: Latin/Greek/Cyrillic lookalikes share a group
    pairs = "AΑ AА BВ EЕ ZΖ HН IІ KК MМ NΝ OΟ OО PР TТ YΥ XХ CС SЅ JЈ ΓГ ΠП ΦФ"
    pairs += " oο oо aа eе pр cс yу xх sѕ iі jј vν κк"
    for pair in pairs.split():
        assert group_of.get(pair[0]) is not None and group_of.get(pair[0]) == group_of.get(pair[1]), pair


def test_one_class_per_homoglyph_group(glyphs_dir):
    chars = [ch for ch, _ in E.glyph_characters()]
    assert len(chars) == len(set(chars))
    for group in E.HOMOGLYPH_GROUPS:
        assert sum(ch in group for ch in chars) <= 1, group
    assert not {"0", "1"} & set(chars)
    alphabets = Counter(E._alphabet(ch) for ch in chars)
    assert {"latin", "greek", "cyrillic"} <= set(alphabets)
    assert all(alphabets[a] >= 20 for a in ("latin", "greek", "cyrillic"))
    # the folders are exactly these characters
    manifest = E.read_manifest(glyphs_dir)
    assert sorted(c[4:] for c in manifest["classes"]) == sorted(E._class_name(ch) for ch in chars)


def test_font_coverage():
    fonts = E._font_paths()
    assert len(fonts) == len(E.GLYPH_FONT_FILES)
    for ch, covering in E.glyph_characters():
        assert len(covering) >= E.GLYPH_MIN_FONTS
        assert all(ord(ch) in E._font_cmap(fonts[i]) for i in covering)


# --------------------------------------------------------------------------- split


def test_glyphs_split_mixes_alphabets(glyphs_dir):
    names = [p.name for p in _class_folders(glyphs_dir)]
    half = len(names) // 2
    train, test = names[:half], names[half:]
    assert len({_alphabet(n) for n in train} & {"latin", "greek", "cyrillic"}) >= 2
    assert len({_alphabet(n) for n in test} & {"latin", "greek", "cyrillic"}) >= 2


def test_digits_split(digits_dir):
    names = [p.name for p in _class_folders(digits_dir)]
    assert names[:5] == [f"{d + 1:03d}.digit_{d}" for d in range(5)]


# --------------------------------------------------------------------------- ensure_embedded


def test_idempotent(glyphs_dir):
    manifest = glyphs_dir / E.MANIFEST_NAME
    before = manifest.stat().st_mtime_ns
    assert E.ensure_embedded("glyphs", glyphs_dir.parent, seed=0) == glyphs_dir
    assert manifest.stat().st_mtime_ns == before
    assert sorted(p.name for p in glyphs_dir.parent.iterdir()) == ["glyphs"]  # no temp dirs


def _failing_spec(monkeypatch, name: str):
    def build(dest: Path, seed: int):
        (dest / "images" / "001.half_written").mkdir(parents=True)
        (dest / "images" / "001.half_written" / "0000.png").write_bytes(b"not yet")
        raise RuntimeError("boom")

    monkeypatch.setitem(E.EMBEDDED_DATASETS, name, dataclasses.replace(E.EMBEDDED_DATASETS[name], build=build))


def test_atomic_on_failure(tmp_path, monkeypatch):
    _failing_spec(monkeypatch, "digits")
    with pytest.raises(RuntimeError, match="boom"):
        E.ensure_embedded("digits", tmp_path)
    assert not (tmp_path / "digits").exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_existing_copy(tmp_path, monkeypatch):
    old = tmp_path / "digits"
    (old / "images").mkdir(parents=True)
    (old / E.MANIFEST_NAME).write_text(json.dumps({"name": "digits", "version": -1, "seed": None}))
    _failing_spec(monkeypatch, "digits")
    with pytest.raises(RuntimeError):
        E.ensure_embedded("digits", tmp_path)
    assert json.loads((old / E.MANIFEST_NAME).read_text())["version"] == -1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]


def test_other_version_is_replaced(tmp_path):
    old = tmp_path / "digits"
    (old / "images" / "001.stale").mkdir(parents=True)
    (old / E.MANIFEST_NAME).write_text(json.dumps({"name": "digits", "version": -1, "seed": None}))
    (tmp_path / "half").mkdir()  # a folder without manifest is rebuilt too
    ds = E.ensure_embedded("digits", tmp_path)
    assert ds == old
    m = E.read_manifest(ds)
    assert m["version"] == E.EMBEDDED_DATASETS["digits"].version and m["n_images"] == 1797
    assert not (ds / "images" / "001.stale").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "half"]


def test_seed_change_rebuilds_glyphs(tmp_path, monkeypatch):
    calls = []
    real = E.EMBEDDED_DATASETS["glyphs"]

    def tiny_build(dest: Path, seed: int):  # stands in for the real (slower) generator
        calls.append(seed)
        folder = dest / "images" / f"001.seed_{seed}"
        folder.mkdir(parents=True)
        Image.new("L", (32, 32), seed).save(folder / "00.png")
        return [folder.name]

    monkeypatch.setitem(E.EMBEDDED_DATASETS, "glyphs", dataclasses.replace(real, build=tiny_build))
    E.ensure_embedded("glyphs", tmp_path, seed=3)
    E.ensure_embedded("glyphs", tmp_path, seed=3)
    ds = E.ensure_embedded("glyphs", tmp_path, seed=4)
    assert calls == [3, 4]
    assert E.read_manifest(ds)["classes"] == ["001.seed_4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["glyphs"]


def test_race_keeps_the_winner(tmp_path, monkeypatch):
    real = E.EMBEDDED_DATASETS["digits"]
    winner = {}

    def racing_build(dest: Path, seed: int):
        classes = real.build(dest, seed)
        # another process finishes first and installs its own complete copy
        other = tmp_path / "digits"
        shutil.copytree(dest / "images", other / "images")
        E._write_manifest(other, real, seed, classes)
        winner["mtime"] = (other / E.MANIFEST_NAME).stat().st_mtime_ns
        return classes

    monkeypatch.setitem(E.EMBEDDED_DATASETS, "digits", dataclasses.replace(real, build=racing_build))
    ds = E.ensure_embedded("digits", tmp_path)
    assert (ds / E.MANIFEST_NAME).stat().st_mtime_ns == winner["mtime"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]


def test_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="digits.*glyphs"):
        E.ensure_embedded("omniglot", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_specs():
    for name, spec in E.EMBEDDED_DATASETS.items():
        assert spec.name == name and isinstance(spec.version, int) and callable(spec.build)
        assert spec.description
    assert E.EMBEDDED_DATASETS["glyphs"].image_size == 32 and E.EMBEDDED_DATASETS["glyphs"].samples_per_class == 20
    assert E.EMBEDDED_DATASETS["digits"].image_size == 8 and E.EMBEDDED_DATASETS["digits"].n_images == 1797
    assert E.is_embedded("glyphs") and not E.is_embedded("cub200")
