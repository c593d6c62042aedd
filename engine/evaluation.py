"""Embedding extraction and the bridge from a dataset to ``engine.metrics``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader

from engine import metrics
from engine.data import ImageDataset


@torch.no_grad()
def embed_dataset(model: torch.nn.Module, dataset: ImageDataset, *, batch_size: int, device: torch.device,
                  workers: int = 0, channels_last: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (float32, on the CPU) and labels of every item, in dataset order, in eval mode
    (under the caller's autocast, if any). *progress* is called with (items done, items) after each batch."""
    was_training = model.training
    model.eval()
    # A private generator: evaluating must not consume the training's global random stream.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator())
    chunks, labels, done = [], [], 0
    for images, batch_labels, _ in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        chunks.append(model(images).float())  # stays on the device: one copy to the host at the end, not one a batch
        labels.append(batch_labels)
        done += len(batch_labels)
        if progress is not None:
            progress(done, len(dataset))
    model.train(was_training)
    return torch.cat(chunks).cpu(), torch.cat(labels)


def raw_pixels(dataset: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened eval-transformed images: the 'no learning at all' baseline."""
    pixels = torch.stack([dataset[i][0].flatten() for i in range(len(dataset))]).float()
    return pixels, dataset.labels.clone()


def evaluate_embeddings(embeddings: torch.Tensor, labels: torch.Tensor, names: list[str], *, seed: int = 0,
                        on_gpu: bool = False, backend: str = "auto", query: Any = None,
                        gallery: Any = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Metric values and the reasons of the missing ones (see :func:`engine.metrics.compute_metrics`).

    The work runs on the GPU when *on_gpu* is set (``eval.on_gpu``) and CUDA is
    available, else on the CPU; *backend* is ``eval.backend`` ('auto', 'torch' or
    'faiss'; see :mod:`engine.metrics.backends`). *query* and *gallery* (row indices,
    a split's ``ImageList.query``/``gallery``) make retrieval rank the gallery for
    every query instead of every sample against all others.
    """
    device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
    return metrics.compute_metrics(embeddings, labels, names, seed=seed, device=device, backend=backend, query=query,
                                   gallery=gallery)
