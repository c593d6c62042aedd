"""`dmltui data fetch / check / list` against tiny archives in the official formats, served from 127.0.0.1.

The archives hold a few 8x8 images each; the config file's [data.expected.<name>] gives their counts (the
published ones are for the real datasets).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import typer
from conftest import dmltui, make_class_folders
from PIL import Image

from engine.data import DatasetError, check_layout
from engine.data import sources as S

TINY_COUNTS = {"cub200": (9, 3), "cars196": (9, 3), "online_products": (8, 4), "in_shop": (6, 3)}
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
CAR_NAMES = ["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012", "smart fortwo Convertible 2012"]


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _cub_archive() -> bytes:
    """CUB_200_2011.tgz's layout: images/<NNN.Name>/*.jpg and the txt files that index them."""
    members, images, labels, split = {"attributes.txt": b"1 has_bill_shape::curved\n"}, [], [], []
    for label, folder in enumerate(CUB_CLASSES, start=1):
        bird = folder.split(".", 1)[1]
        for i in range(3):
            image_id = len(images) + 1
            relative = f"{folder}/{bird}_{i + 1:04d}_{image_id}.jpg"
            members[f"CUB_200_2011/images/{relative}"] = _jpeg(image_id)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {label}")
            split.append(f"{image_id} {i % 2}")
    members["CUB_200_2011/images.txt"] = "\n".join(images).encode() + b"\n"
    members["CUB_200_2011/classes.txt"] = "\n".join(f"{i} {c}" for i, c in enumerate(CUB_CLASSES, 1)).encode() + b"\n"
    members["CUB_200_2011/image_class_labels.txt"] = "\n".join(labels).encode() + b"\n"
    members["CUB_200_2011/train_test_split.txt"] = "\n".join(split).encode() + b"\n"
    return _tgz(members)


def _cars_members(tmp: Path) -> dict[str, bytes]:
    """car_ims/NNNNNN.jpg and cars_annos.mat as in the original files: a 1xN struct array and a 1xC cell array."""
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, 9), dtype=[(f, "O") for f in fields])
    members = {}
    for i in range(9):
        path = f"car_ims/{i + 1:06d}.jpg"
        members[path] = _jpeg(100 + i)
        # Interleaved classes: the conversion has to group the images by class, not by file order.
        annotations[0, i] = (path, 1, 1, 7, 7, np.array([[i % 3 + 1]], dtype=np.uint8), i % 2)
    class_names = np.empty((1, 3), dtype=object)
    class_names[0, :] = CAR_NAMES
    scipy.io.savemat(tmp / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    members["cars_annos.mat"] = (tmp / "cars_annos.mat").read_bytes()
    return members


def _sop_archive() -> bytes:
    """Stanford_Online_Products.zip's layout: <super>_final/ folders with Ebay_*.txt beside them."""
    header = "image_id class_id super_class_id path"
    rows, members = [], {}
    for image_id in range(1, 9):
        class_id = (image_id + 1) // 2
        super_name = ("bicycle", "chair")[(class_id - 1) % 2]
        path = f"{super_name}_final/{111085122870 + class_id}_{image_id % 2}.JPG"
        members[f"Stanford_Online_Products/{path}"] = _jpeg(200 + image_id)
        rows.append(f"{image_id} {class_id} {(class_id - 1) % 2 + 1} {path}")
    members["Stanford_Online_Products/Ebay_train.txt"] = "\n".join([header, *rows[:4]]).encode() + b"\n"
    members["Stanford_Online_Products/Ebay_test.txt"] = "\n".join([header, *rows[4:]]).encode() + b"\n"
    members["Stanford_Online_Products/Ebay_info.txt"] = "\n".join([header, *rows]).encode() + b"\n"
    return _zip(members)


def _inshop_files() -> tuple[bytes, bytes]:
    """DeepFashion's img.zip (img/<gender>/<category>/<item>/*.jpg) and Eval/list_eval_partition.txt."""
    members, rows = {}, []
    for n in range(6):
        item = f"id_{80 + n // 2:08d}"
        name = f"img/MEN/Denim/{item}/{n % 2 + 1:02d}_1_front.jpg"
        members[name] = _jpeg(300 + n)
        rows.append(f"{name:<60}{item:<14}{('train', 'query', 'gallery')[n // 2]}")
    partition = "\n".join(["6", "image_name item_id evaluation_status", *rows]) + "\n"
    return _zip(members), partition.encode()


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("archives")
    img_zip, partition = _inshop_files()
    cars = _cars_members(folder)
    contents = {"CUB_200_2011-tiny.tgz": _cub_archive(), "CARS196.tgz": _tgz(cars),
                "car_ims.tgz": _tgz({k: v for k, v in cars.items() if k.startswith("car_ims/")}),
                "cars_annos.mat": cars["cars_annos.mat"],
                "Stanford_Online_Products.zip": _sop_archive(), "img.zip": img_zip,
                "list_eval_partition.txt": partition}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in contents}


class ArchiveServer:
    """http.server on 127.0.0.1 with Range support, a request log, and connections dropped half way on demand."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drops: dict[str, int] = {}  # name -> how many more answers to cut off half way
        self.requests: list[tuple[str, str | None]] = []  # (name, Range header)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                asked = self.headers.get("Range")
                server.requests.append((name, asked))
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1)) if asked else 0
                self.send_response(206 if asked else 200)
                if asked:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                rest = body[start:]
                self.send_header("Content-Length", str(len(rest)))
                self.end_headers()
                if server.drops.get(name, 0) > 0:
                    server.drops[name] -= 1
                    rest = rest[: len(rest) // 2]
                self.wfile.write(rest)

            def log_message(self, *args):
                pass

        return Handler

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(archives):
    served = ArchiveServer()
    served.files = {name: path.read_bytes() for name, path in archives.items()}
    yield served
    served.close()


def _config(tmp_path: Path, extra: str = "") -> dict:
    """The user config file of a test: the tiny archives' counts, plus *extra* TOML."""
    lines = [f"[data.expected.{name}]\nimages = {images}\nclasses = {classes}\n"
             for name, (images, classes) in TINY_COUNTS.items()]
    path = tmp_path / "config.toml"
    path.write_text(extra + "\n" + "\n".join(lines))
    return {"DMLTUI_CONFIG": str(path)}


def _leftovers(root: Path) -> list[str]:
    """What a failed fetch left under the root, apart from the lock file; only .part files may stay."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix != ".lock")


def _fetch_args(name: str, server: ArchiveServer, archives: dict[str, Path]) -> list[str]:
    if name == "cub200":  # a URL given with --from: a subset, so the published md5 does not apply
        return ["--from", server.url("CUB_200_2011-tiny.tgz")]
    if name == "cars196":
        return ["--url", server.url("CARS196.tgz")]
    if name == "in_shop":  # the two files one downloads by hand from DeepFashion's Drive
        return ["--from", str(archives["img.zip"]), "--from", str(archives["list_eval_partition.txt"])]
    return []  # online_products: the mirrors of the config file


@pytest.mark.parametrize("name", list(TINY_COUNTS))
def test_fetch_converts_to_the_loader_layout_and_check_passes(name, server, archives, tmp_path):
    root = tmp_path / "data"
    mirrors = f'[data.mirrors]\nonline_products = ["{server.url("gone.zip")}", "{server.url("Stanford_Online_Products.zip")}"]\n'
    env = _config(tmp_path, mirrors)
    fetched = dmltui("data", "fetch", name, "--root", str(root), *_fetch_args(name, server, archives), "--json", env=env)
    assert fetched.returncode == 0, fetched.stderr
    record = json.loads(fetched.stdout)
    images, classes = TINY_COUNTS[name]
    assert (record["images"], record["classes"], record["verified_by"]) == (images, classes, "counts")
    folder = root / name
    assert json.loads((folder / S.SOURCE_RECORD).read_text())["files"] == record["files"]
    first = record["files"][0]
    served = archives[first["source"].rsplit("/", 1)[1]] if "://" in first["source"] else Path(first["source"])
    assert first["sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()
    assert sorted(p.name for p in root.iterdir()) == [S.DOWNLOADS, name]  # no temporary folder, no archive left
    assert _leftovers(root / S.DOWNLOADS) == []

    if name == "cars196":
        folders = sorted(p.name for p in (folder / "images").iterdir())
        assert folders == ["001.AM_General_Hummer_SUV_2000", "002.Ram_C_V_Cargo_Van_Minivan_2012",
                           "003.smart_fortwo_Convertible_2012"]
        assert sorted(p.name for p in (folder / "images" / folders[1]).iterdir()) == ["000002.jpg", "000005.jpg", "000008.jpg"]
    elif name == "online_products":
        assert sorted(p.name for p in (folder / "images").iterdir()) == ["bicycle_final", "chair_final"]
        assert (folder / "Info_Files" / "Ebay_train.txt").is_file()
        assert [r[0] for r in server.requests] == ["gone.zip", "Stanford_Online_Products.zip"]  # a dead mirror, then the next
    elif name == "cub200":
        assert [p.name for p in sorted((folder / "images").iterdir())] == CUB_CLASSES
    else:
        assert (folder / "list_eval_partition.txt").is_file() and (folder / "img" / "MEN").is_dir()
    if name != "in_shop":  # In-Shop's loader comes with another issue
        check_layout(name, root)
    assert S.present(name, root)

    checked = dmltui("data", "check", name, "--root", str(root), "--workers", "1", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == f"{name}: ok, {images} images in {classes} classes, every image decodes ({folder})"


def test_a_dropped_connection_resumes_from_the_byte_it_reached(server, archives, tmp_path):
    root, env = tmp_path / "data", _config(tmp_path)
    server.drops["CARS196.tgz"] = 3  # every attempt of the first fetch is cut off half way
    failed = dmltui("data", "fetch", "cars196", "--root", str(root), "--url", server.url("CARS196.tgz"), env=env)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1].startswith("error: could not download the archive: ")
    assert "to resume from: run the same command again; " in failed.stderr.splitlines()[-1]
    offsets = [int(asked.split("=")[1].rstrip("-")) if asked else 0 for _, asked in server.requests]
    assert offsets[0] == 0 and 0 < offsets[1] < offsets[2]  # the retries asked for Range: bytes=N- from where they were
    parts = list((root / S.DOWNLOADS / "cars196").glob("*.part"))
    assert len(parts) == 1 and not (root / "cars196").exists()
    assert _leftovers(root) == [str(parts[0].relative_to(root))]  # only the .part, kept to resume from
    kept = parts[0].stat().st_size

    resumed = dmltui("data", "fetch", "cars196", "--root", str(root), "--url", server.url("CARS196.tgz"), "--json", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert server.requests[3] == ("CARS196.tgz", f"bytes={kept}-")
    record = json.loads(resumed.stdout)
    assert record["files"][0]["sha256"] == hashlib.sha256(server.files["CARS196.tgz"]).hexdigest()
    assert (record["images"], record["classes"]) == TINY_COUNTS["cars196"]


def test_a_wrong_checksum_extracts_nothing_and_names_both_hashes(server, archives, tmp_path):
    root = tmp_path / "data"
    server.files["CUB_200_2011.tgz"] = server.files["CUB_200_2011-tiny.tgz"]  # a mirror serving the wrong file
    result = dmltui("data", "fetch", "cub200", "--root", str(root), "--url", server.url("CUB_200_2011.tgz"),
                    env=_config(tmp_path))
    assert result.returncode == 1
    actual = hashlib.md5(server.files["CUB_200_2011.tgz"]).hexdigest()
    published = S.SOURCES.get("cub200").checksum.split(":")[1]
    error = result.stderr.splitlines()[-1]  # after the progress messages
    assert error.startswith("error: ") and f"md5 is {actual}, expected {published}" in error
    assert error.endswith("the download was removed and nothing was extracted")
    assert _leftovers(root) == [] and not (root / "cub200").exists()
    assert not list(root.glob(f"{S.TMP_PREFIX}*"))


def test_a_full_disk_is_refused_before_any_request(server, tmp_path, monkeypatch, capsys):
    from dmltui.cli import data as data_cli

    root = tmp_path / "data"
    monkeypatch.setenv("DMLTUI_CONFIG", _config(tmp_path)["DMLTUI_CONFIG"])
    monkeypatch.setattr(data_cli, "free_bytes", lambda path: 1000)
    with pytest.raises(typer.Exit) as exit_info:
        data_cli.fetch("cars196", root=root, files=None, url=server.url("CARS196.tgz"), as_json=False)
    assert exit_info.value.exit_code == 1
    message = capsys.readouterr().err
    assert re.fullmatch(rf"error: not enough space under {re.escape(str(root))}: cars196 \(archive and extracted "
                        r"files, estimated\) needs [\d.]+ [kM]B, 1\.0 kB free\n", message), message
    assert server.requests == [] and not root.exists()


def test_check_reports_a_corrupt_jpeg_on_one_line(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "cub200" / "images", 3, 3, size=(8, 8))
    broken = root / "cub200" / "images" / "002.Class_1" / "img_001.jpg"
    broken.write_bytes(broken.read_bytes()[:-40])
    result = dmltui("data", "check", "cub200", "--root", str(root), "--workers", "2", env=_config(tmp_path))
    assert result.returncode == 1
    problems = [line for line in result.stdout.splitlines() if not line.startswith("cub200: ")]
    assert len(problems) == 1 and problems[0].startswith(f"{broken}: cannot decode: ")
    assert result.stdout.splitlines()[-1] == f"cub200: 1 problem(s) ({root / 'cub200'})"
    report = json.loads(dmltui("data", "check", "--root", str(root), "--json", env=_config(tmp_path)).stdout)
    assert [(r["name"], r["ok"], r["decoded"], [p["path"] for p in r["problems"]]) for r in report] == [
        ("cub200", False, 8, [str(broken)])]


def test_a_half_extracted_folder_is_never_taken_for_a_dataset(archives, tmp_path):
    root = tmp_path / "data"
    crashed = root / f"{S.TMP_PREFIX}cub200-k3j4h5g6"  # what a fetch killed during the extraction leaves
    make_class_folders(crashed / "cub200" / "images", 3, 2, size=(8, 8))
    make_class_folders(crashed / "staging" / "CUB_200_2011" / "images", 2, 1, size=(8, 8))
    env = _config(tmp_path)

    named = dmltui("data", "check", "cub200", "--root", str(root), env=env)
    assert named.returncode == 1
    assert named.stdout.splitlines()[0] == f"{root / 'cub200'}: does not exist; fetch it with `dmltui data fetch cub200`"
    unnamed = dmltui("data", "check", "--root", str(root), env=env)
    assert unnamed.returncode == 1 and unnamed.stderr.startswith(f"error: no dataset under {root}; ")
    listed = json.loads(dmltui("data", "list", "--root", str(root), "--json", env=env).stdout)
    assert [entry["present"] for entry in listed] == [False] * 4
    with pytest.raises(DatasetError, match="cub200/images does not exist"):
        check_layout("cub200", root)
    assert not S.present("cub200", root)

    fetched = dmltui("data", "fetch", "cub200", "--root", str(root), "--from", str(archives["CUB_200_2011-tiny.tgz"]), env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert not crashed.exists()  # the next fetch of the dataset clears what a crashed one left


def test_list_json_reports_counts_sizes_source_and_cache(archives, tmp_path):
    root, env = tmp_path / "data", _config(tmp_path)
    files = ["--from", str(archives["img.zip"]), "--from", str(archives["list_eval_partition.txt"])]
    assert dmltui("data", "fetch", "in_shop", "--root", str(root), *files, env=env).returncode == 0
    (root / "in_shop" / S.CACHE_DIRNAME / "256px-abc").mkdir(parents=True)
    (root / "in_shop" / S.CACHE_DIRNAME / "256px-abc" / "pixels.u8").write_bytes(b"\0" * 5000)
    result = dmltui("data", "list", "--root", str(root), "--json", env=env)
    assert result.returncode == 0, result.stderr
    entries = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert sorted(entries) == ["cars196", "cub200", "in_shop", "online_products"]
    shop = entries["in_shop"]
    dataset_bytes = sum(p.stat().st_size for p in (root / "in_shop").rglob("*") if p.is_file()) - 5000
    assert (shop["present"], shop["images"], shop["classes"], shop["bytes"], shop["verified"], shop["verified_by"],
            shop["cache"], shop["cache_bytes"]) == (True, 6, 3, dataset_bytes, True, "counts", True, 5000)
    assert [entries[n]["present"] for n in ("cars196", "cub200", "online_products")] == [False, False, False]
    table = dmltui("data", "list", "--root", str(root), env=env).stdout
    assert re.search(r"in_shop\s+yes\s+6\s+3\s+[\d.]+ kB\s+counts \d{4}-\d\d-\d\d\s+5\.0 kB", table), table


@pytest.mark.parametrize(("config", "message"), [
    ("[data.mirrors\ncub200 = 1\n", r"^error: .*config\.toml: not valid TOML: "),
    ('[data.mirrors]\ncub200 = "http://x/a.tgz"\n', r"^error: .*config\.toml: data\.mirrors\.cub200 must be a list of http\(s\) URLs"),
    ("[data.expected.cub200]\nimage = 3\n", r"^error: .*config\.toml: data\.expected\.cub200\.image is not a setting; allowed: images, classes"),
])
def test_a_bad_config_file_is_one_line_naming_file_and_key(config, message, tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(config)
    result = dmltui("data", "fetch", "cub200", "--root", str(tmp_path / "data"), env={"DMLTUI_CONFIG": str(path)})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "data").exists()


def test_in_shop_needs_the_files_by_hand_and_unknown_names_exit_3(tmp_path):
    result = dmltui("data", "fetch", "in_shop", "--root", str(tmp_path / "data"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "Google Drive" in result.stderr and "--from" in result.stderr
    unknown = dmltui("data", "check", "cub", "--root", str(tmp_path / "data"))
    assert unknown.returncode == 3
    assert unknown.stderr == "error: unknown dataset 'cub' (did you mean 'cub200'?); allowed: cars196, cub200, in_shop, online_products\n"


def test_extraction_refuses_members_outside_the_folder(tmp_path):
    evil_zip = tmp_path / "evil.zip"
    evil_zip.write_bytes(_zip({"ok/a.txt": b"a", "../escaped.txt": b"b"}))
    with pytest.raises(S.FetchError, match=r"'\.\./escaped\.txt' would be written outside"):
        S.extract(evil_zip, tmp_path / "out")
    evil_tgz = tmp_path / "evil.tgz"
    evil_tgz.write_bytes(_tgz({"ok/a.txt": b"a", "../escaped.txt": b"b"}))
    (tmp_path / "out2").mkdir()
    with pytest.raises(S.FetchError, match="refusing the archive"):
        S.extract(evil_tgz, tmp_path / "out2")
    assert not (tmp_path / "escaped.txt").exists()


def test_a_server_that_ignores_range_is_read_from_the_start(tmp_path):
    class NoRange(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "4000")
            self.end_headers()
            self.wfile.write(b"x" * 4000)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), NoRange)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        target = tmp_path / "file.bin"
        target.with_name("file.bin.part").write_bytes(b"junk from another file")
        S.download(f"http://127.0.0.1:{httpd.server_port}/file.bin", target, delays=())
        assert target.read_bytes() == b"x" * 4000
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_cars196_from_the_original_two_files(archives, tmp_path):
    """Stanford's original download was car_ims.tgz plus a bare cars_annos.mat: the .mat is no archive."""
    source = S.SOURCES.get("cars196")
    inputs = S.plan_inputs(source, files=[str(archives["car_ims.tgz"]), str(archives["cars_annos.mat"])])
    record = S.fetch(source, tmp_path / "data", inputs, expected=S.Expected(9, 3, "test"), free_space=lambda path: 10**12)
    assert (record["images"], record["classes"], len(record["files"])) == (9, 3, 2)
    assert len(list((tmp_path / "data" / "cars196" / "images").iterdir())) == 3
