"""Batch samplers, looked up by name (config ``sampler.name``).

A sampler is a ``batch_sampler`` for ``torch.utils.data.DataLoader``: it yields lists
of dataset indices, ``len(dataset) // batch_size`` batches per epoch. Samplers are
seeded from (run seed, epoch) through :meth:`set_epoch`, so an epoch's batches are
the same whether the run was resumed or not.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from engine.registry import Registry

SAMPLERS: Registry[type] = Registry("sampler")


@SAMPLERS.register("class_random")
class ClassRandomSampler:
    """Each batch: batch_size / samples_per_class draws; each draw picks a class uniformly
    (with replacement across draws, as the original: a class can appear twice) and then
    samples_per_class images of it uniformly with replacement."""

    def __init__(self, labels: np.ndarray, *, batch_size: int, samples_per_class: int, seed: int = 0):
        if batch_size % samples_per_class:
            raise ValueError(f"batch_size={batch_size} is not a multiple of samples_per_class={samples_per_class}")
        labels = np.asarray(labels)
        self.classes = np.unique(labels)
        self.members = [np.flatnonzero(labels == c) for c in self.classes]
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.num_batches = len(labels) // batch_size
        if self.num_batches == 0:
            raise ValueError(f"sampler.batch_size={batch_size} exceeds the {len(labels)} training images")
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Batches of *epoch*, from *start_batch* on (a resume inside an epoch skips the done ones)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        draws = self.batch_size // self.samples_per_class
        for index in range(self.num_batches):
            chosen = rng.integers(len(self.classes), size=draws)
            batch = [int(i) for c in chosen for i in rng.choice(self.members[c], self.samples_per_class)]
            if index >= self.start_batch:
                yield batch


def create(name: str, labels, **params) -> object:
    return SAMPLERS.get(name)(labels, **params)


def list_samplers() -> list[str]:
    return SAMPLERS.names()
