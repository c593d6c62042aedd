"""``class_random``: the original's default sampler (and every paper run's).

Each batch: batch_size / samples_per_class draws; each draw picks a class uniformly
(with replacement across draws, as the original: a class can appear twice in a batch)
and then samples_per_class images of it uniformly with replacement (duplicates
possible, as the original's ``random.choice``).

Departures from the original: numpy's generator seeded from (seed, epoch) instead of
Python's global ``random`` state, so an epoch's batches do not depend on what ran
before (exact resume).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from engine.samplers import SAMPLERS
from engine.samplers.base import BatchSampler, seed_entropy


@SAMPLERS.register("class_random")
class ClassRandomSampler(BatchSampler):
    name = "class_random"

    def __iter__(self) -> Iterator[list[int]]:
        # One stream per epoch (kept from the first version, so existing runs replay).
        rng = np.random.default_rng([seed_entropy(self.seed), self.epoch])
        draws = self.batch_size // self.samples_per_class
        for index in range(self.num_batches):
            chosen = rng.integers(len(self.classes), size=draws)
            batch = [int(i) for c in chosen for i in rng.choice(self.members[c], self.samples_per_class)]
            if index >= self.start_batch:
                yield batch
