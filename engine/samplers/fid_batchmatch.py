"""``fid_batchmatch``: the batch whose Gaussian fit is closest (Fréchet distance) to a big batch's.

Same plumbing as ``disthist_batchmatch`` (a class-wise big batch of
``batchmatch_bigbs`` samples, ``batchmatch_ncomps`` class-structured candidates from
it, the lowest cost wins), with

    cost = ‖μ_big − μ_cand‖² + Tr(Σ_big + Σ_cand − 2 (Σ_big Σ_cand)^{1/2})

(the Fréchet/FID distance between Gaussian fits of the embeddings). The trace of the
matrix square root is computed as Σ √λ_i over the eigenvalues of the symmetric PSD
matrix Σ_big^{1/2} Σ_cand Σ_big^{1/2} (negative round-off eigenvalues clipped to 0),
which equals Tr((Σ_big Σ_cand)^{1/2}) and needs no complex ``sqrtm`` (a singular
candidate covariance, batch smaller than the dimension, is fine).

Departures from the original:

* It is reachable (the original's ``select`` raised a NameError).
* The trace term comes from a symmetric eigendecomposition, not ``scipy.linalg.sqrtm``
  of the non-symmetric product (same value, no complex round-off to discard).
* Candidates are distinct class groups of the big batch (see disthist_batchmatch).
* Batches are computed lazily from the current memory with (seed, epoch, batch
  index) RNG streams; ``mb_mom`` in (0, 1) is a moving-average memory update.
* ``lowproj_dim > 0``: one fixed, seeded Gaussian projection applied as embeddings enter
  the memory (the original drew a fresh random ``nn.Linear`` for every big batch).
"""

from __future__ import annotations

import numpy as np

from engine.samplers import SAMPLERS
from engine.samplers.base import BatchMatchSampler


def covariance(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(0)
    return centred.T @ centred / max(len(x) - 1, 1)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mean1, cov1_sqrt, cov1_trace, mean2, cov2) -> float:
    inner = cov1_sqrt @ cov2 @ cov1_sqrt
    values = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(values, 0.0, None)).sum())
    return float(((mean1 - mean2) ** 2).sum() + cov1_trace + np.trace(cov2) - 2.0 * trace_sqrt)


@SAMPLERS.register("fid_batchmatch")
class FIDBatchMatchSampler(BatchMatchSampler):
    name = "fid_batchmatch"

    def summary(self, big: np.ndarray) -> dict:
        cov = covariance(big)
        return {"mean": big.mean(0), "cov_sqrt": psd_sqrt(cov), "cov_trace": float(np.trace(cov))}

    def cost(self, big: dict, candidate: np.ndarray) -> float:
        return frechet_distance(big["mean"], big["cov_sqrt"], big["cov_trace"], candidate.mean(0), covariance(candidate))
