"""``random`` (alias ``full_random``, the original's accepted spelling): batches without
class structure.

Each batch: batch_size - 1 samples, each a uniformly drawn class and then a uniformly
drawn sample of it; the last sample is a same-class partner of a randomly chosen one
of those, so every batch has at least one positive pair. ``samples_per_class`` only
has to divide batch_size (as the original, which only asserted it).

Departures from the original: the partner is a *different* sample of the class when
the class has one (the original could pick the sample itself, a useless pair);
numpy's generator seeded from (seed, epoch, batch index) instead of Python's global
``random`` state.
"""

from __future__ import annotations

import numpy as np

from engine.samplers import SAMPLERS
from engine.samplers.base import BatchSampler


@SAMPLERS.register("full_random")
@SAMPLERS.register("random")
class RandomSampler(BatchSampler):
    name = "random"

    def __init__(self, labels, **kwargs):
        super().__init__(labels, **kwargs)
        if self.batch_size < 2:
            raise ValueError(f"sampler {self.name!r} needs batch_size >= 2 (one positive pair)")

    def make_batch(self, rng: np.random.Generator) -> list[int]:
        chosen = rng.integers(len(self.classes), size=self.batch_size - 1)
        batch = [int(rng.choice(self.members[c])) for c in chosen]
        anchor = batch[int(rng.integers(len(batch)))]
        return batch + self.partners(anchor, 1, rng)
