"""Export a run's model and embeddings (``dmltui export``), and search an exported index (``dmltui search``).

* ONNX: ``torch.onnx.export`` (a dynamic batch axis), then onnxruntime must give the same
  embeddings as torch on a batch of the run's test images (max |Δ| ≤ 1e-4), else the file
  is removed and :class:`ExportError` raised.
* TorchScript: ``torch.jit.trace``, reloaded and checked the same way.
* Embeddings: ``.npy`` (the N × D array) or ``.npz`` (``vectors``, ``labels``, ``paths``,
  ``class_names``).
* A faiss index: an exact ``IndexFlatL2`` of a split's embeddings (the gallery) in
  ``FILE.faiss``, and beside it ``FILE.faiss.json``: the run directory, the checkpoint
  (path, epoch, fingerprint), the split, and the label, class and path of every row.
  :func:`search` embeds new images with that run's checkpoint (refusing a checkpoint that
  changed since) and ranks the gallery by exact Euclidean distance.

Every file is written to a temporary name beside the target and renamed into place once
complete and checked: a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.embed import (
    Checkpoint,
    Embeddings,
    EmbedError,
    build_model,
    checkpoint_choice,
    embed,
    eval_transform,
    input_size,
    load_checkpoint,
    same_checkpoint,
    split_images,
)
from engine.io import atomic_write_bytes, atomic_write_text

PARITY_TOLERANCE = 1e-4
PARITY_BATCH = 8
INDEX_VERSION = 1


class ExportError(RuntimeError):
    """An export that failed its check, or an index that cannot be used; one line."""


def sidecar(index_path: str | os.PathLike) -> Path:
    """The JSON file beside a faiss index: ``FILE.faiss.json``."""
    return Path(f"{index_path}.json")


def _temporary(path: Path) -> Path:
    """An empty file beside *path* to write into and rename over it (readable by all, as atomic writes make them)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-", suffix=path.suffix)
    os.fchmod(fd, 0o644)
    os.close(fd)
    return Path(name)


def _model_and_batch(ckpt: Checkpoint):
    """The checkpoint's model (CPU, eval) and a batch of the run's test images (seeded noise without the dataset)."""
    import torch

    state, _ = load_checkpoint(ckpt)
    model = build_model(ckpt.config, state)
    try:
        _, images = split_images(ckpt.config, "test")
        from engine.data import ImageDataset

        dataset = ImageDataset(images, eval_transform(ckpt.config))
        batch = torch.stack([dataset[i][0] for i in range(min(PARITY_BATCH, len(dataset)))])
    except EmbedError:
        size = input_size(ckpt.config)
        batch = torch.randn(PARITY_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    return model, batch


def _check_parity(expected, got, path: Path, what: str) -> float:
    difference = float(np.abs(np.asarray(expected) - np.asarray(got)).max())
    if not difference <= PARITY_TOLERANCE:
        raise ExportError(f"{path}: {what} differs from torch by {difference:.2e} (> {PARITY_TOLERANCE:g}) "
                          "on a batch of test images; nothing written")
    return difference


def export_onnx(ckpt: Checkpoint, path: str | os.PathLike) -> dict[str, Any]:
    """Write the model as ONNX (input ``images`` N×3×S×S, output ``embeddings`` N×D) after an onnxruntime check."""
    import onnxruntime
    import torch

    path = Path(path)
    model, batch = _model_and_batch(ckpt)
    tmp = _temporary(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (batch,), str(tmp), input_names=["images"], output_names=["embeddings"],
                              dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}}, dynamo=True,
                              external_data=False, verbose=False)  # one self-contained file
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            expected = model(batch).numpy()
        got = session.run(["embeddings"], {"images": batch.numpy()})[0]
        difference = _check_parity(expected, got, path, "onnxruntime's output")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path), "batch": len(batch), "max_abs_difference": difference}


def export_torchscript(ckpt: Checkpoint, path: str | os.PathLike) -> dict[str, Any]:
    """Write the model traced to TorchScript, after reloading it and checking its output."""
    import torch

    path = Path(path)
    model, batch = _model_and_batch(ckpt)
    tmp = _temporary(path)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit is deprecated upstream, and still what C++ and mobile load
            torch.jit.save(torch.jit.trace(model, batch), str(tmp))
            expected = model(batch).numpy()
            got = torch.jit.load(str(tmp))(batch).numpy()
        difference = _check_parity(expected, got, path, "the reloaded TorchScript's output")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path), "batch": len(batch), "max_abs_difference": difference}


def export_embeddings(embeddings: Embeddings, path: str | os.PathLike) -> dict[str, Any]:
    """``.npy``: the vectors; ``.npz``: vectors, labels, paths and class names."""
    import io

    path = Path(path)
    buffer = io.BytesIO()
    if path.suffix == ".npy":
        np.save(buffer, embeddings.vectors)
    elif path.suffix == ".npz":
        np.savez(buffer, vectors=embeddings.vectors, labels=embeddings.labels,
                 paths=np.asarray(embeddings.paths, dtype=str), class_names=np.asarray(embeddings.class_names, dtype=str))
    else:
        raise ValueError(f"--embeddings {path}: the file must end in .npy or .npz")
    atomic_write_bytes(path, buffer.getvalue())
    return {"path": str(path), "images": len(embeddings), "dim": int(embeddings.vectors.shape[1])}


def export_index(embeddings: Embeddings, path: str | os.PathLike, run_dir: str | os.PathLike) -> dict[str, Any]:
    """An exact faiss index of *embeddings* (the gallery) and its ``.json`` sidecar."""
    import faiss

    path = Path(path)
    index = faiss.IndexFlatL2(embeddings.vectors.shape[1])
    index.add(np.ascontiguousarray(embeddings.vectors, dtype=np.float32))
    meta = {"version": INDEX_VERSION, "run_dir": str(Path(run_dir).resolve()), "checkpoint": embeddings.checkpoint,
            "split": embeddings.split, "metric": "euclidean", "labels": embeddings.labels.tolist(),
            "class_names": embeddings.class_names, "paths": embeddings.paths}
    atomic_write_text(sidecar(path), json.dumps(meta))
    try:
        atomic_write_bytes(path, faiss.serialize_index(index).tobytes())
    except BaseException:
        sidecar(path).unlink(missing_ok=True)
        raise
    return {"path": str(path), "sidecar": str(sidecar(path)), "images": len(embeddings)}


def load_index(path: str | os.PathLike):
    """(faiss index, sidecar metadata); ExportError naming what is missing or does not match."""
    import faiss

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"index {path} does not exist")
    if not sidecar(path).is_file():
        raise ExportError(f"{sidecar(path)} does not exist: an index needs the sidecar `dmltui export --index` writes")
    try:
        meta = json.loads(sidecar(path).read_text())
        index = faiss.deserialize_index(np.frombuffer(path.read_bytes(), dtype=np.uint8))
    except (ValueError, RuntimeError) as error:
        raise ExportError(f"{path}: not a dmltui faiss index ({str(error).strip().splitlines()[0]})") from None
    if meta.get("version") != INDEX_VERSION or index.ntotal != len(meta.get("paths", [])):
        raise ExportError(f"{path} and {sidecar(path)} do not belong together (or come from another version)")
    return index, meta


def search(index_path: str | os.PathLike, images: Sequence[str | os.PathLike], *, k: int = 5,
           device: str | None = "auto") -> list[dict[str, Any]]:
    """For each image: its k nearest gallery images (rank, path, class, exact Euclidean distance), and the checkpoint
    that embedded it (path, epoch, and how a best checkpoint was chosen: ``engine.embed.checkpoint_choice``)."""
    index, meta = load_index(index_path)
    checkpoint = Path(meta["checkpoint"]["path"])
    if not same_checkpoint(meta["checkpoint"]["fingerprint"], checkpoint):
        raise ExportError(f"{checkpoint} is not the checkpoint {index_path} was built with (changed or gone); "
                          "export the index again")
    k = min(k, index.ntotal)
    queries = embed(checkpoint, list(images), device=device).vectors
    _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    names = meta["class_names"]
    used = {"path": str(checkpoint), "epoch": meta["checkpoint"].get("epoch"), "chosen": checkpoint_choice(checkpoint)}
    found = []
    for image, query, row in zip(images, queries, ids, strict=True):
        vectors = np.stack([index.reconstruct(int(i)) for i in row])
        distances = np.linalg.norm(vectors - query, axis=1)  # exact, not faiss's |q|²+|g|²−2q·g
        order = np.lexsort((row, distances))
        found.append({"image": str(image), "neighbours": [
            {"rank": rank, "path": meta["paths"][row[i]], "distance": float(distances[i]),
             "class": names[meta["labels"][row[i]]] if 0 <= meta["labels"][row[i]] < len(names) else None}
            for rank, i in enumerate(order, start=1)], "checkpoint": used})
    return found
