"""`dmltui export` (ONNX, TorchScript, embeddings, faiss index) and `dmltui search`, on a finished quickstart run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import dmltui

from dmltui import export as export_ops
from engine.embed import build_model, embed, eval_transform, load_checkpoint, resolve_checkpoint, split_images


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_everything_and_search_finds_a_gallery_image_at_distance_0(quickstart_copy, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = dmltui("export", str(quickstart_copy), "--onnx", str(out / "model.onnx"), "--torchscript",
                    str(out / "model.pt"), "--embeddings", str(out / "test.npz"), "--index", str(out / "gallery.faiss"),
                    "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    written = json.loads(result.stdout)
    assert written["onnx"]["max_abs_difference"] <= 1e-4 and written["torchscript"]["max_abs_difference"] <= 1e-4
    # the quickstart has no validation split: its best checkpoint was chosen on test, and the export says so
    assert written["checkpoint"]["name"] == "best" and written["checkpoint"]["path"].endswith("best_test_e_recall@1.pt")
    assert written["checkpoint"]["chosen"] == {"split": "test", "metric": "e_recall@1"}
    assert sorted(p.name for p in out.iterdir()) == ["gallery.faiss", "gallery.faiss.json", "model.onnx", "model.pt",
                                                     "test.npz"]

    # ONNX parity, checked here independently: a batch of 32 test images through onnxruntime and torch
    import onnxruntime

    ckpt = resolve_checkpoint(quickstart_copy, "best")
    state, _ = load_checkpoint(ckpt)
    model = build_model(ckpt.config, state)
    _, images = split_images(ckpt.config, "test")
    from engine.data import ImageDataset

    dataset = ImageDataset(images, eval_transform(ckpt.config))
    batch = torch.stack([dataset[i][0] for i in range(0, 1560, 49)])
    with torch.no_grad():
        expected = model(batch).numpy()
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"images": batch.numpy()})[0], expected, atol=1e-4, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(out / "model.pt"))(batch).numpy(), expected, atol=1e-5, rtol=0)

    reference = embed(quickstart_copy, "test", device="cpu")
    with np.load(out / "test.npz") as saved:
        assert np.array_equal(saved["vectors"], reference.vectors) and np.array_equal(saved["labels"], reference.labels)
        assert saved["paths"].tolist() == reference.paths and saved["class_names"].tolist() == reference.class_names

    index, meta = export_ops.load_index(out / "gallery.faiss")
    assert index.ntotal == 1560 and meta["paths"] == reference.paths and meta["split"] == "test"
    assert meta["run_dir"] == str(quickstart_copy.resolve()) and meta["checkpoint"]["name"] == "best"

    image = reference.paths[123]
    found = dmltui("search", str(out / "gallery.faiss"), image, "-k", "3", "--device", "cpu", "--json")
    assert found.returncode == 0, found.stderr
    [hit] = json.loads(found.stdout)
    assert hit["checkpoint"]["chosen"] == {"split": "test", "metric": "e_recall@1"}
    assert "was chosen on the test split by its best R@1: the run had no validation split" in found.stderr
    first = hit["neighbours"][0]
    assert first["path"] == image and first["distance"] == pytest.approx(0.0, abs=1e-5)
    assert first["class"] == reference.class_names[reference.labels[123]]
    assert [n["rank"] for n in hit["neighbours"]] == [1, 2, 3]
    assert hit["neighbours"][1]["distance"] >= first["distance"]
    text = dmltui("search", str(out / "gallery.faiss"), image, "-k", "2", "--device", "cpu")
    assert text.stdout.splitlines()[0] == f"{image}:" and text.stdout.splitlines()[1].split()[:2] == ["1", "0.0000"]


def test_an_onnx_export_that_fails_its_check_leaves_nothing(quickstart_copy, tmp_path, monkeypatch):
    import onnxruntime

    real_run = onnxruntime.InferenceSession.run
    monkeypatch.setattr(onnxruntime.InferenceSession, "run",
                        lambda self, *args, **kwargs: [real_run(self, *args, **kwargs)[0] + 1e-3])
    target = tmp_path / "model.onnx"
    with pytest.raises(export_ops.ExportError, match=r"model.onnx: onnxruntime's output differs from torch by 1.00e-03"):
        export_ops.export_onnx(resolve_checkpoint(quickstart_copy, "best"), target)
    assert list(tmp_path.iterdir()) == [quickstart_copy]


def test_search_refuses_an_index_whose_checkpoint_changed(quickstart_copy, tmp_path):
    index = tmp_path / "gallery.faiss"
    result = dmltui("export", str(quickstart_copy), "--index", str(index), "--checkpoint", "last", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"index: {index}")
    assert result.stdout.splitlines()[-1] == f"checkpoint: {quickstart_copy / 'checkpoints' / 'last.pt'}"  # not a best
    image = json.loads(Path(f"{index}.json").read_text())["paths"][0]
    last = quickstart_copy / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=False)
    state["model"]["head.bias"] += 1.0
    torch.save(state, last)
    refused = dmltui("search", str(index), image, "--device", "cpu")
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: ") and "is not the checkpoint" in line and "export the index again" in line


@pytest.mark.parametrize("args,code,message", [
    (["export", "RUN"], 2, "nothing to export: give --onnx, --torchscript, --embeddings and/or --index"),
    (["export", "RUN", "--embeddings", "OUT/e.csv"], 2, "--embeddings OUT/e.csv: the file must end in .npy or .npz"),
    (["export", "RUN", "--onnx", "OUT/no/m.onnx"], 2, "folder OUT/no does not exist"),
    (["export", "nope", "--onnx", "OUT/m.onnx"], 3, "no run with id 'nope'"),
    (["export", "RUN", "--onnx", "OUT/m.onnx", "--checkpoint", "OUT/x.pt"], 3, "checkpoint OUT/x.pt does not exist"),
    (["search", "OUT/none.faiss", "RUN/config.toml"], 3, "index OUT/none.faiss does not exist"),
    (["search", "OUT/none.faiss", "OUT/none.png"], 3, "image OUT/none.png does not exist"),
])
def test_export_and_search_errors_are_one_line_and_leave_nothing(quickstart_copy, tmp_path, args, code, message):
    out = tmp_path / "out"
    out.mkdir()
    args = [a.replace("RUN", str(quickstart_copy)).replace("OUT", str(out)) for a in args]
    result = dmltui(*args, "--device", "cpu")
    assert result.returncode == code, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message.replace("OUT", str(out)) in line
    assert list(out.iterdir()) == []


def test_an_index_without_its_sidecar_is_an_error(quickstart_copy, tmp_path):
    index = tmp_path / "g.faiss"
    export_ops.export_index(embed(quickstart_copy, "test", device="cpu"), index, quickstart_copy)
    Path(f"{index}.json").unlink()
    result = dmltui("search", str(index), str(quickstart_copy / "config.toml"))
    assert result.returncode == 1 and "g.faiss.json does not exist" in result.stderr
