"""The two small datasets that ship inside dmltui: ``glyphs`` and ``digits``.

Both are generated on first use and written **once** as PNG files in the CUB200 folder
layout under a data-cache root::

    <root>/<name>/images/<NNN.class_name>/<file>.png
    <root>/<name>/MANIFEST.json

``NNN`` is a 3-digit, 1-based class number. The folder loader sorts the class folders by
that number and uses the first half of the classes for training and the second half for
testing (zero-shot protocol), so the numbering chosen here decides the split.

``glyphs``
    An Omniglot-like set: Latin, Greek and Cyrillic letters (upper and lower case, plus
    the extra Cyrillic letters of Ukrainian/Serbian/Macedonian and the digits 2-9),
    rendered with the TrueType fonts matplotlib ships (DejaVu Sans, DejaVu Serif,
    DejaVu Sans Mono, STIXGeneral; each in regular, bold, italic/oblique, bold-italic).
    Glyphs that look alike across (or within) alphabets are kept once, see
    :data:`HOMOGLYPH_GROUPS`. Each class has 20 samples over different fonts, each drawn
    on a 64x64 canvas with a random rotation, scale and shift, reduced to 32x32 grayscale
    ('L') and given a little Gaussian pixel noise. Light glyph on a dark background
    (like MNIST and like ``digits``). The classes are shuffled with the seed before they
    are numbered, so both halves of the split mix the alphabets.

``digits``
    scikit-learn's bundled ``load_digits()`` (1,797 8x8 images, 10 classes), scaled from
    0..16 to 0..255 and written as 8x8 grayscale PNGs in folders ``001.digit_0`` ...
    ``010.digit_9``: digits 0-4 train, 5-9 test. The seed does not change this dataset;
    it is recorded as ``null`` in the manifest and ignored when checking an existing copy.

Generation is deterministic: the same seed gives byte-identical PNG files (and the same
``sha256`` in the manifest) on the same library versions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

__all__ = [
    "EMBEDDED_DATASETS",
    "EmbeddedSpec",
    "GLYPH_FONT_FILES",
    "HOMOGLYPH_GROUPS",
    "MANIFEST_NAME",
    "ensure_embedded",
    "glyph_characters",
    "is_embedded",
    "read_manifest",
]

MANIFEST_NAME = "MANIFEST.json"
IMAGES_DIR = "images"

# --------------------------------------------------------------------------- glyphs: characters


def _chars(first: str, last: str) -> str:
    return "".join(chr(c) for c in range(ord(first), ord(last) + 1))


#: Candidate characters, in the order in which they are considered. Within a homoglyph
#: group the first candidate met is the one kept, so Latin wins over Greek over Cyrillic.
_LATIN = _chars("A", "Z") + _chars("a", "z")
# Greek without the final sigma (a positional form of sigma, not its own letter).
_GREEK = (
    _chars("\u0391", "\u03a1") + _chars("\u03a3", "\u03a9")  # Alpha-Rho, Sigma-Omega
    + _chars("\u03b1", "\u03c1") + _chars("\u03c3", "\u03c9")  # alpha-rho, sigma-omega
)
_CYRILLIC_RUSSIAN = _chars("\u0410", "\u042f") + "\u0401" + _chars("\u0430", "\u044f") + "\u0451"  # А-Я Ё а-я ё
# Extra letters of Ukrainian/Belarusian/Serbian/Macedonian: Ђ Ѓ Є Ѕ І Ї Ј Љ Њ Ћ Ќ Ў Џ Ґ (+ lower case).
_CYRILLIC_EXTRA = "ЂЃЄЅІЇЈЉЊЋЌЎЏҐ" + "ђѓєѕіїјљњћќўџґ"
_DIGITS = "23456789"  # 0 and 1 are left out: they look like O and l/I.

_CANDIDATES = _LATIN + _GREEK + _CYRILLIC_RUSSIAN + _CYRILLIC_EXTRA + _DIGITS

#: Reviewed table of characters that look the same (in at least the sans fonts used).
#: Only one character per group becomes a class: the first one in candidate order.
#: Groups are written Latin, Greek, Cyrillic (then digits) where those exist.
HOMOGLYPH_GROUPS: tuple[str, ...] = (
    # upper case
    "AΑА",  # Latin A, Greek Alpha, Cyrillic A
    "BΒВ",  # B, Beta, Ve
    "CС",  # C, Es
    "EΕЕ",  # E, Epsilon, Ie
    "HΗН",  # H, Eta, En
    "IΙІl",  # I, Iota, Byelorussian-Ukrainian I, and Latin small l (identical in DejaVu Sans)
    "JЈ",  # J, Je
    "KΚК",  # K, Kappa, Ka
    "MΜМ",  # M, Mu, Em
    "NΝ",  # N, Nu
    "OΟО",  # O, Omicron, O
    "PΡР",  # P, Rho, Er
    "SЅ",  # S, Dze
    "TΤТ",  # T, Tau, Te
    "XΧХ",  # X, Chi, Ha
    "YΥ",  # Y, Upsilon
    "ZΖ",  # Z, Zeta
    "ΓГ",  # Gamma, Ghe
    "ΠП",  # Pi, Pe
    "ΦФ",  # Phi, Ef
    "З3",  # Cyrillic Ze, digit three
    # lower case
    "aа",  # a, Cyrillic a
    "cс",  # c, Cyrillic es
    "eе",  # e, Cyrillic ie
    "iі",  # i, Cyrillic byelorussian-ukrainian i
    "jј",  # j, Cyrillic je
    "oοо",  # o, omicron, Cyrillic o
    "pр",  # p, Cyrillic er
    "sѕ",  # s, Cyrillic dze
    "vν",  # v, Greek nu
    "xх",  # x, Cyrillic ha
    "yу",  # y, Cyrillic u
    "κк",  # Greek kappa, Cyrillic ka
)

#: The font files (in matplotlib's ``fonts/ttf`` folder) the glyphs are drawn with.
GLYPH_FONT_FILES: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
)

GLYPH_MIN_FONTS = 4  # a character drawn by fewer fonts is dropped
GLYPH_SAMPLES_PER_CLASS = 20
GLYPH_IMAGE_SIZE = 32
_CANVAS = 64  # drawn at twice the final size, then reduced
_FONT_PX = 34  # font size on the canvas (em square); tallest glyphs stay well inside 64 px
_MAX_ROTATION_DEG = 15.0
_SCALE_RANGE = (0.75, 1.1)
_MAX_SHIFT_PX = 4.0  # on the 64 px canvas, i.e. +-2 px at 32x32
_NOISE_SIGMA = 8.0  # grey levels (0..255)


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@cache
def _font_cmap(path: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    font = TTFont(path, lazy=True)
    try:
        return frozenset((font.getBestCmap() or {}).keys())
    finally:
        font.close()


@cache
def _font_paths() -> tuple[str, ...]:
    d = _font_dir()
    paths = tuple(str(d / f) for f in GLYPH_FONT_FILES if (d / f).is_file())
    if len(paths) < GLYPH_MIN_FONTS:
        raise RuntimeError(f"only {len(paths)} of matplotlib's fonts found in {d}; cannot draw the glyphs dataset")
    return paths


def _alphabet(ch: str) -> str:
    return unicodedata.name(ch).split(" ")[0].lower()  # latin / greek / cyrillic / digit


def _class_name(ch: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", unicodedata.name(ch).lower().replace(" ", "_"))


@cache
def glyph_characters() -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The glyph classes in their fixed (unshuffled) order, with the fonts that draw them.

    Returns ``((char, font_indices), ...)``: one entry per kept character, in candidate
    order (Latin, Greek, Cyrillic, extra Cyrillic, digits), after dropping homoglyphs
    (one per :data:`HOMOGLYPH_GROUPS` group) and characters fewer than
    ``GLYPH_MIN_FONTS`` fonts contain. ``font_indices`` index :func:`_font_paths`.
    """
    group_of: dict[str, int] = {}
    for gi, group in enumerate(HOMOGLYPH_GROUPS):
        for ch in group:
            if ch in group_of:
                raise AssertionError(f"{ch!r} is in two homoglyph groups")
            group_of[ch] = gi
    cmaps = [_font_cmap(p) for p in _font_paths()]
    taken_groups: set[int] = set()
    seen: set[str] = set()
    out: list[tuple[str, tuple[int, ...]]] = []
    for ch in _CANDIDATES:
        if ch in seen:
            continue
        seen.add(ch)
        gi = group_of.get(ch)
        if gi is not None and gi in taken_groups:
            continue
        covering = tuple(i for i, cmap in enumerate(cmaps) if ord(ch) in cmap)
        if len(covering) < GLYPH_MIN_FONTS:
            continue
        if gi is not None:
            taken_groups.add(gi)
        out.append((ch, covering))
    return tuple(out)


@cache
def _pil_font(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size=size)


def _render_glyph(ch: str, font_path: str, rng: np.random.Generator):
    """One 32x32 'L' sample of ``ch`` in the given font, with the seeded augmentation."""
    from PIL import Image, ImageDraw

    font = _pil_font(font_path, _FONT_PX)
    # Draw centred by the glyph's ink bounding box on the big canvas.
    left, top, right, bottom = font.getbbox(ch)
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    c = _CANVAS / 2.0
    ImageDraw.Draw(canvas).text((c - (left + right) / 2.0, c - (top + bottom) / 2.0), ch, font=font, fill=255)

    angle = math.radians(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
    scale = rng.uniform(*_SCALE_RANGE)
    dx, dy = rng.uniform(-_MAX_SHIFT_PX, _MAX_SHIFT_PX, size=2)
    # The few widest glyphs (e.g. bold-italic Cyrillic Zhe) could touch the canvas edge at the
    # largest scale and rotation: shrink just those so the whole glyph stays inside.
    w, h = right - left, bottom - top
    half_w = 0.5 * (w * abs(math.cos(angle)) + h * abs(math.sin(angle)))
    half_h = 0.5 * (w * abs(math.sin(angle)) + h * abs(math.cos(angle)))
    room = c - 1.0 - max(abs(dx), abs(dy))
    scale = min(scale, room / max(half_w, half_h, 1.0))
    # PIL's AFFINE maps output (x, y) to input (a x + b y + c, d x + e y + f): the inverse of
    # "scale and rotate about the centre, then shift".
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    a, b, d, e = cos, sin, -sin, cos
    ox, oy = c + dx, c + dy
    coeffs = (a, b, c - a * ox - b * oy, d, e, c - d * ox - e * oy)
    img = canvas.transform(
        (_CANVAS, _CANVAS), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR, fillcolor=0
    )
    img = img.resize((GLYPH_IMAGE_SIZE, GLYPH_IMAGE_SIZE), Image.Resampling.BOX)

    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0.0, _NOISE_SIGMA, size=arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _save_png(img, path: Path) -> None:
    # Fixed options and no metadata (PIL writes no time chunk), so the bytes are reproducible.
    img.save(path, format="PNG", optimize=False, compress_level=6)


def _build_glyphs(dest: Path, seed: int) -> list[str]:
    chars = glyph_characters()
    fonts = _font_paths()
    # Class order: shuffle with the seed, so the train half (first half of the numbers) and
    # the test half both mix alphabets. The per-character samples do not depend on the order.
    order = np.random.default_rng([seed, 0x6C7970]).permutation(len(chars))
    images = dest / IMAGES_DIR
    classes: list[str] = []
    for number, idx in enumerate(order, start=1):
        ch, covering = chars[int(idx)]
        folder = f"{number:03d}.{_class_name(ch)}"
        (images / folder).mkdir(parents=True)
        rng = np.random.default_rng([seed, ord(ch)])
        perm = rng.permutation(len(covering))  # cycle through the fonts in a seeded order
        for k in range(GLYPH_SAMPLES_PER_CLASS):
            font_path = fonts[covering[int(perm[k % len(perm)])]]
            _save_png(_render_glyph(ch, font_path, rng), images / folder / f"{k:02d}.png")
        classes.append(folder)
    return classes


# --------------------------------------------------------------------------- digits


def _build_digits(dest: Path, seed: int) -> list[str]:
    from PIL import Image
    from sklearn.datasets import load_digits

    del seed  # sklearn's digits are fixed data; the seed changes nothing
    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = dest / IMAGES_DIR
    classes = [f"{d + 1:03d}.digit_{d}" for d in range(10)]
    for folder in classes:
        (images / folder).mkdir(parents=True)
    for i, (img, label) in enumerate(zip(pixels, bunch.target, strict=True)):
        _save_png(Image.fromarray(img, mode="L"), images / classes[int(label)] / f"{i:04d}.png")
    return classes


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class EmbeddedSpec:
    """How to build one embedded dataset. ``build(dest, seed)`` writes ``dest/images/...``
    and returns the class folder names in class-number order."""

    name: str
    description: str
    n_classes: int | None  # None: known once the fonts are inspected (see n_classes_now())
    samples_per_class: int | None  # None where classes differ in size
    n_images: int | None
    image_size: int
    build: Callable[[Path, int], list[str]]
    version: int
    seeded: bool = True  # False: the seed does not change the data (and is not checked)
    extra: dict = field(default_factory=dict)

    def n_classes_now(self) -> int:
        if self.n_classes is not None:
            return self.n_classes
        return len(glyph_characters())


EMBEDDED_DATASETS: dict[str, EmbeddedSpec] = {
    "glyphs": EmbeddedSpec(
        name="glyphs",
        description=(
            "Omniglot-like letters: Latin, Greek and Cyrillic glyphs (homoglyphs kept once) drawn with 16 "
            "fonts/styles, 20 augmented 32x32 grayscale samples per class; classes shuffled by the seed."
        ),
        n_classes=None,
        samples_per_class=GLYPH_SAMPLES_PER_CLASS,
        n_images=None,
        image_size=GLYPH_IMAGE_SIZE,
        build=_build_glyphs,
        version=1,
    ),
    "digits": EmbeddedSpec(
        name="digits",
        description="scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes); digits 0-4 train, 5-9 test.",
        n_classes=10,
        samples_per_class=None,
        n_images=1797,
        image_size=8,
        build=_build_digits,
        version=1,
        seeded=False,
    ),
}


def is_embedded(name: str) -> bool:
    return name in EMBEDDED_DATASETS


def _spec(name: str) -> EmbeddedSpec:
    try:
        return EMBEDDED_DATASETS[name]
    except KeyError:
        allowed = ", ".join(sorted(EMBEDDED_DATASETS))
        raise ValueError(f"unknown embedded dataset {name!r}; allowed: {allowed}") from None


# --------------------------------------------------------------------------- manifest + install


def read_manifest(path: Path | str) -> dict | None:
    """The parsed ``MANIFEST.json`` of a dataset folder, or None if missing/unreadable."""
    try:
        with open(Path(path) / MANIFEST_NAME, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _manifest_matches(folder: Path, spec: EmbeddedSpec, seed: int) -> bool:
    m = read_manifest(folder)
    if m is None or m.get("name") != spec.name or m.get("version") != spec.version:
        return False
    if spec.seeded and m.get("seed") != seed:
        return False
    return (folder / IMAGES_DIR).is_dir()


def _image_digest(images: Path) -> tuple[str, int]:
    """sha256 over (relative path, NUL, bytes) of every PNG, in sorted path order."""
    h = hashlib.sha256()
    files = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    for rel in files:
        h.update(rel.encode("utf-8") + b"\0")
        h.update((images / rel).read_bytes())
    return h.hexdigest(), len(files)


def _write_manifest(folder: Path, spec: EmbeddedSpec, seed: int, classes: list[str]) -> dict:
    digest, n_images = _image_digest(folder / IMAGES_DIR)
    manifest = {
        "name": spec.name,
        "version": spec.version,
        "seed": seed if spec.seeded else None,
        "image_size": spec.image_size,
        "image_mode": "L",
        "n_classes": len(classes),
        "n_images": n_images,
        "classes": classes,
        "sha256": digest,
        "description": spec.description,
    }
    tmp = folder / (MANIFEST_NAME + ".part")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST_NAME)
    return manifest


def ensure_embedded(name: str, root: Path | str, *, seed: int = 0) -> Path:
    """Make sure ``<root>/<name>`` holds the embedded dataset ``name`` built with ``seed``.

    Returns at once if its ``MANIFEST.json`` has the same version (and seed, for seeded
    datasets). Otherwise builds the whole dataset into a temporary sibling directory, writes
    the manifest last and renames the directory into place; an older copy is moved aside
    first and then deleted. If another process installs a valid copy meanwhile, that copy
    is kept and ours discarded. No half-written dataset ever appears at ``<root>/<name>``,
    and the temporary directory is removed on any error.
    """
    spec = _spec(name)
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    root = Path(root)
    dest = root / name
    if _manifest_matches(dest, spec, seed):
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=root))
    try:
        classes = spec.build(tmp, seed)
        _write_manifest(tmp, spec, seed, classes)
        if _manifest_matches(dest, spec, seed):  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
            return dest
        aside: Path | None = None
        if dest.exists() or dest.is_symlink():  # stale (other version/seed) or broken copy
            aside = root / f".{name}.old-{uuid.uuid4().hex[:12]}"
            try:
                os.replace(dest, aside)
            except FileNotFoundError:  # someone else moved it meanwhile
                aside = None
        try:
            os.rename(tmp, dest)
        except OSError:
            if _manifest_matches(dest, spec, seed):  # installed by someone else just now
                shutil.rmtree(tmp, ignore_errors=True)
                return dest
            raise
        finally:
            if aside is not None:
                _remove(aside)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
