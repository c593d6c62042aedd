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
  h_cand)``). The original passed the histogram *values* as samples and added both
  argument orders (W1 is symmetric, so that was twice one W1 of the count values);
  its distance term therefore measured the spread of bin counts, not how the
  distance distributions differ, and the weight 75 had another scale.
* Batches are computed lazily from the current memory with (seed, epoch, batch
  index) RNG streams; ``mb_mom`` in (0, 1) is a moving-average memory update.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import pdist
from scipy.stats import wasserstein_distance

from engine.samplers import SAMPLERS
from engine.samplers.base import BatchMatchSampler

HIST_BINS = 50
HIST_WEIGHT = 75.0


@SAMPLERS.register("disthist_batchmatch")
class DistHistBatchMatchSampler(BatchMatchSampler):
    name = "disthist_batchmatch"

    def summary(self, big: np.ndarray) -> dict:
        dists = pdist(big)
        lo, hi = (float(dists.min()), float(dists.max())) if len(dists) else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi, HIST_BINS + 1)
        hist, _ = np.histogram(dists, bins=edges)
        return {"mean": big.mean(0), "std": big.std(0), "edges": edges, "centres": (edges[:-1] + edges[1:]) / 2, "hist": hist}

    def cost(self, big: dict, candidate: np.ndarray) -> float:
        dists = np.clip(pdist(candidate), big["edges"][0], big["edges"][-1])
        hist, _ = np.histogram(dists, bins=big["edges"])
        w1 = wasserstein_distance(big["centres"], big["centres"], big["hist"], hist) if hist.sum() else 0.0
        return float(
            np.linalg.norm(big["mean"] - candidate.mean(0))
            + np.linalg.norm(big["std"] - candidate.std(0))
            + HIST_WEIGHT * w1
        )
