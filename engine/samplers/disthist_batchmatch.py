"""``disthist_batchmatch``: the batch whose embedding statistics match a big batch best.

Per batch: a big batch of ``batchmatch_bigbs`` samples drawn class-wise (as
class_random: bigbs / samples_per_class class draws of samples_per_class samples);
``batchmatch_ncomps`` candidate batches, each a random choice of batch_size /
samples_per_class of the big batch's class groups (so candidates keep the class
structure); the candidate with the lowest cost is the batch, where

    cost = ‖μ_big − μ_cand‖ + ‖σ_big − σ_cand‖ + 75 · W1(h_big, h_cand)

with μ, σ the per-dimension mean and standard deviation of the embeddings (from the
memory, see :class:`~engine.samplers.base.MemorySampler`) and h the 50-bin histograms
of the pairwise Euclidean distances (pairs i < j) over the big batch's distance range.

Departures from the original:

* W1 is the Wasserstein-1 distance between the two histograms as distributions over
  the bin centres (``scipy.stats.wasserstein_distance(centres, centres, h_big,
  h_cand)``). The original passed the histogram *values* as samples, so its term
  compared the sets of bin heights, not how the two distance distributions differ,
  and the weight 75 had another scale.
* A candidate is batch_size / samples_per_class *distinct* class groups of the big
  batch (the original drew a big-batch class per group with replacement, so a
  candidate could hold the same class, even the same group, twice).
* The cost adds one W1 with weight 75 (the original's two-order sum doubled it).
* Batches are computed lazily from the current memory with (seed, epoch, batch
  index) RNG streams; ``mb_mom`` in (0, 1) is a moving-average memory update.
* ``lowproj_dim > 0``: one fixed, seeded Gaussian projection applied as embeddings enter
  the memory (the original drew a fresh random ``nn.Linear`` for every big batch).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import wasserstein_distance

from engine.samplers import SAMPLERS
from engine.samplers.base import BatchMatchSampler, squared_distances

HIST_BINS = 50
HIST_WEIGHT = 75.0


def pair_distances(x: np.ndarray) -> np.ndarray:
    """Euclidean distances of the pairs i < j of the rows of *x*."""
    rows, cols = np.triu_indices(len(x), k=1)
    return np.sqrt(squared_distances(x, x)[rows, cols])


@SAMPLERS.register("disthist_batchmatch")
class DistHistBatchMatchSampler(BatchMatchSampler):
    name = "disthist_batchmatch"

    def summary(self, big: np.ndarray) -> dict:
        dists = pair_distances(big)
        lo, hi = (float(dists.min()), float(dists.max())) if len(dists) else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi, HIST_BINS + 1)
        hist, _ = np.histogram(dists, bins=HIST_BINS, range=(lo, hi))
        return {"mean": big.mean(0), "std": big.std(0), "edges": edges, "centres": (edges[:-1] + edges[1:]) / 2, "hist": hist}

    def cost(self, big: dict, candidate: np.ndarray) -> float:
        dists = np.clip(pair_distances(candidate), big["edges"][0], big["edges"][-1])
        hist, _ = np.histogram(dists, bins=HIST_BINS, range=(big["edges"][0], big["edges"][-1]))
        w1 = wasserstein_distance(big["centres"], big["centres"], big["hist"], hist) if hist.sum() else 0.0
        return float(
            np.linalg.norm(big["mean"] - candidate.mean(0))
            + np.linalg.norm(big["std"] - candidate.std(0))
            + HIST_WEIGHT * w1
        )
