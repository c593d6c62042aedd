"""``greedy_coreset``: batches that cover the embedding space (greedy k-center).

Per batch: a random subset of ``batchmatch_bigbs`` entries of the embedding memory
(see :class:`~engine.samplers.base.MemorySampler`); greedy k-center over them for
k = batch_size / samples_per_class points: the first point uniformly at random, then
repeatedly the point farthest from the selected ones (largest squared distance to its
nearest selected point), or, with ``gc_softened``, a uniformly random point whose
distance is at or above the 97th percentile of those distances. Each selected sample
is followed by samples_per_class - 1 random samples of its class.

Departures from the original:

* The selected positions map to dataset indices through the same subset they were
  chosen from (the original mapped them through a different random subset, so its
  batches were effectively random).
* Batches are computed lazily from the current memory with per-batch RNG streams
  (seed, epoch, batch index) instead of being precomputed for the whole epoch with
  joblib; memory updates during an epoch therefore affect the later batches.
* ``mb_mom`` in (0, 1) turns the memory update into a moving average (the original
  never wired it); the same-class partners are distinct other samples of the class
  when it has enough.
* ``gc_coreset_lim`` (unused by the original) is not taken.
* ``lowproj_dim > 0``: one fixed, seeded Gaussian projection applied as embeddings enter
  the memory (the original drew a fresh random ``nn.Linear`` for every big batch).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from engine.samplers import SAMPLERS
from engine.samplers.base import CoresetSampler, MemorySampler, squared_distances_to

SOFTENED_PERCENTILE = 97.0


@SAMPLERS.register("greedy_coreset")
class GreedyCoresetSampler(CoresetSampler):
    name = "greedy_coreset"
    PARAMS: ClassVar[tuple[str, ...]] = MemorySampler.PARAMS + ("gc_softened",)

    def __init__(self, labels, *, gc_softened: bool = False, **kwargs):
        super().__init__(labels, **kwargs)
        self.gc_softened = gc_softened

    def select(self, x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        chosen = [int(rng.integers(len(x)))]
        taken = np.zeros(len(x), dtype=bool)
        taken[chosen[0]] = True
        min_dist = squared_distances_to(x, x[chosen[0]])
        for _ in range(k - 1):
            free = np.flatnonzero(~taken)
            if self.gc_softened:
                threshold = np.percentile(min_dist[free], SOFTENED_PERCENTILE)
                pool = free[min_dist[free] >= threshold]
                nxt = int(rng.choice(pool))
            else:
                nxt = int(free[np.argmax(min_dist[free])])
            chosen.append(nxt)
            taken[nxt] = True
            min_dist = np.minimum(min_dist, squared_distances_to(x, x[nxt]))
        return np.asarray(chosen)
