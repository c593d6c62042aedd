"""Base classes of the batch samplers.

:class:`BatchSampler` is a ``batch_sampler`` for ``torch.utils.data.DataLoader``: it
yields lists of exactly ``batch_size`` dataset indices, ``len(labels) // batch_size``
batches per epoch, seeded from (run seed, epoch[, batch index]) through
:meth:`BatchSampler.set_epoch`, so an epoch's batches are the same whether the run
was resumed or not, and a resume inside an epoch (``start_batch``) yields exactly the
tail of the uninterrupted sequence.

:class:`MemorySampler` adds the embedding memory of the storage samplers
(greedy_coreset, d2_coreset, disthist_batchmatch, fid_batchmatch). The trainer drives
it through the interface every sampler has (no-ops for memoryless ones)::

    sampler = engine.samplers.from_config(config, train_labels)
    if resuming:
        sampler.load_state_dict(checkpoint["sampler"])   # memory + this epoch's generated batches
    elif sampler.needs_memory:
        sampler.init_memory(embeddings)                  # N x D, whole train set in dataset order, eval transform
    for epoch ...:
        # (sampler.idx_full_prec: the trainer may call init_memory again here with fresh embeddings)
        sampler.set_epoch(epoch, start_batch=k)          # k > 0 only for the resumed epoch
        for images, labels, indices in loader:           # loader built with batch_sampler=sampler
            ...training step...
            sampler.update_memory(indices, embeddings.detach())   # any device, any float dtype
        checkpoint["sampler"] = sampler.state_dict()     # {} for memoryless samplers

Batches of a memory sampler are computed lazily, one at a time, when the DataLoader
asks for them (in the main process), from the memory as it is at that moment (so
updates during the epoch are used, as the original intended) and from the RNG stream
``np.random.default_rng([seed, epoch, batch_index])``: given the same memory, a batch
is the same. :meth:`MemorySampler.state_dict` also holds the batches of the current
epoch that were already generated (a DataLoader with workers asks for indices
``prefetch_factor * num_workers`` batches ahead of the training step), so a resume
replays those and is exact with any number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import numpy as np
import torch

_BLAS_CONTROLLER: Any = None


def single_threaded_blas() -> AbstractContextManager:
    """A context that runs numpy/scipy BLAS and LAPACK on one thread.

    A batch's linear algebra works on small matrices (≤ bigbs x D), for which
    multi-threaded OpenBLAS only adds start-up and contention (measured 10-100x slower
    on a busy machine, where the training process's own threads compete). threadpoolctl
    comes with scikit-learn; without it this is a no-op."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS_CONTROLLER = ThreadpoolController()
        except Exception:  # pragma: no cover - threadpoolctl missing or broken
            _BLAS_CONTROLLER = False
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas") if _BLAS_CONTROLLER else nullcontext()


def seed_entropy(seed: int) -> int:
    """A run seed as non-negative entropy for :func:`numpy.random.default_rng`."""
    return int(seed) % (1 << 64)


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of *a* and of *b* (clipped at 0)."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def squared_distances_to(x: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of the rows of *x* to one *point* (elementwise, no BLAS call:
    the selection loops call it once per pick, where BLAS thread start-up would dominate)."""
    diff = x - point
    return np.einsum("ij,ij->i", diff, diff)


class BatchSampler:
    """Common constructor, epoch seeding and the (no-op) memory interface.

    Subclasses implement :meth:`make_batch` (one batch from its own RNG stream) or
    override :meth:`__iter__`. ``PARAMS`` names the ``sampler.<field>`` config fields a
    sampler takes as keyword arguments (used by :meth:`from_config`).
    """

    name: ClassVar[str] = ""
    PARAMS: ClassVar[tuple[str, ...]] = ()
    needs_memory: ClassVar[bool] = False

    def __init__(self, labels, *, batch_size: int, samples_per_class: int, seed: int = 0):
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class={samples_per_class} must be at least 1")
        if batch_size % samples_per_class:
            raise ValueError(f"batch_size={batch_size} is not a multiple of samples_per_class={samples_per_class}")
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("labels must be a non-empty 1-d array")
        self.labels = labels
        self.classes, self.class_of = np.unique(labels, return_inverse=True)
        self.members = [np.flatnonzero(self.class_of == c) for c in range(len(self.classes))]
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.num_batches = len(labels) // batch_size
        if self.num_batches == 0:
            raise ValueError(f"sampler.batch_size={batch_size} exceeds the {len(labels)} training images")
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0

    @classmethod
    def from_config(cls, config, labels) -> BatchSampler:
        """Build from a full :class:`~engine.config.schema.Config` (its ``sampler`` section and ``run.seed``)."""
        section = config.sampler
        params = {field: getattr(section, field) for field in cls.PARAMS}
        return cls(labels, batch_size=section.batch_size, samples_per_class=section.samples_per_class,
                   seed=config.run.seed, **params)

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Batches of *epoch*, from *start_batch* on (a resume inside an epoch skips the done ones)."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch={start_batch} outside 0..{self.num_batches}")
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def batch_rng(self, index: int) -> np.random.Generator:
        """The RNG stream of batch *index* of the current epoch."""
        return np.random.default_rng([seed_entropy(self.seed), int(self.epoch), int(index)])

    def __iter__(self) -> Iterator[list[int]]:
        for index in range(self.start_batch, self.num_batches):
            yield self.make_batch(self.batch_rng(index))

    def make_batch(self, rng: np.random.Generator) -> list[int]:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def partners(self, anchor: int, count: int, rng: np.random.Generator) -> list[int]:
        """*count* random samples of *anchor*'s class other than itself: distinct while the
        class has enough other members, with repetition when it has too few, the anchor
        itself when it is alone in its class."""
        if count <= 0:
            return []
        members = self.members[self.class_of[anchor]]
        others = members[members != anchor]
        if len(others) == 0:
            return [int(anchor)] * count
        return [int(i) for i in rng.choice(others, count, replace=len(others) < count)]

    def with_partners(self, anchors, rng: np.random.Generator) -> list[int]:
        """Each anchor followed by samples_per_class - 1 same-class partners (class runs)."""
        batch: list[int] = []
        for anchor in anchors:
            batch.append(int(anchor))
            batch += self.partners(int(anchor), self.samples_per_class - 1, rng)
        return batch

    # ------------------------------------------------------------------ memory interface (no-ops)
    def init_memory(self, embeddings) -> None:
        """Memory samplers: set the embedding memory (N x D, the whole training set)."""

    def update_memory(self, indices, embeddings) -> None:
        """Memory samplers: refresh the entries of *indices* with the batch embeddings."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to resume this sampler exactly (beyond seed and epoch)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (call before :meth:`set_epoch` of the resumed epoch)."""


class MemorySampler(BatchSampler):
    """A sampler that keeps an embedding memory of the whole training set.

    * :meth:`init_memory` (N x D) must be called before iterating.
    * :meth:`update_memory` after each training step, with the batch's dataset indices
      and its (training-transform) embeddings. Nothing happens with
      ``storage_no_update``. With ``mb_mom`` in (0, 1) the entry becomes the
      exponential moving average ``mb_mom * old + (1 - mb_mom) * new``; otherwise
      (the default -1, as the original) the entry is overwritten. Duplicate indices in
      a batch count once (their first occurrence).
    * ``lowproj_dim > 0``: every embedding is projected with a fixed Gaussian matrix
      (D x lowproj_dim, scaled by 1/sqrt(lowproj_dim), seeded by the run seed) as it
      enters the memory; the memory then holds the projections.
    """

    needs_memory: ClassVar[bool] = True
    PARAMS: ClassVar[tuple[str, ...]] = ("batchmatch_bigbs", "storage_no_update", "lowproj_dim", "mb_mom")

    def __init__(self, labels, *, batch_size: int, samples_per_class: int, seed: int = 0,
                 batchmatch_bigbs: int = 512, storage_no_update: bool = False, lowproj_dim: int = -1,
                 mb_mom: float = -1.0):
        super().__init__(labels, batch_size=batch_size, samples_per_class=samples_per_class, seed=seed)
        if batchmatch_bigbs < 2:
            raise ValueError(f"batchmatch_bigbs={batchmatch_bigbs} must be at least 2")
        self.bigbs = batchmatch_bigbs
        self.storage_no_update = storage_no_update
        self.lowproj_dim = lowproj_dim
        self.mb_mom = mb_mom
        self.memory: torch.Tensor | None = None
        self.projection: torch.Tensor | None = None
        self._generated: dict[int, list[int]] = {}
        self._replay: dict[int, list[int]] = {}
        self._restored: tuple[int, dict[int, list[int]]] | None = None

    # ------------------------------------------------------------------ memory
    def _project(self, embeddings) -> torch.Tensor:
        x = torch.as_tensor(embeddings).detach().to("cpu", torch.float32)
        if x.ndim != 2:
            raise ValueError(f"embeddings must be 2-d (N x D), got shape {tuple(x.shape)}")
        if self.lowproj_dim > 0:
            if self.projection is None:
                rng = np.random.default_rng([seed_entropy(self.seed), 0x10B7])
                matrix = rng.standard_normal((x.shape[1], self.lowproj_dim)) / np.sqrt(self.lowproj_dim)
                self.projection = torch.from_numpy(matrix.astype(np.float32))
            if x.shape[1] != self.projection.shape[0]:
                raise ValueError(f"embeddings have {x.shape[1]} dimensions, the projection expects {self.projection.shape[0]}")
            x = x @ self.projection
        return x

    def init_memory(self, embeddings) -> None:
        x = self._project(embeddings)
        if x.shape[0] != len(self.labels):
            raise ValueError(f"init_memory got {x.shape[0]} embeddings for {len(self.labels)} training samples")
        self.memory = x.clone()

    def update_memory(self, indices, embeddings) -> None:
        if self.storage_no_update:
            return
        if self.memory is None:
            raise RuntimeError(f"sampler {self.name!r}: update_memory before init_memory")
        idx = torch.as_tensor(indices).detach().to("cpu", torch.long).reshape(-1).numpy()
        x = self._project(embeddings)
        if len(idx) != x.shape[0]:
            raise ValueError(f"update_memory got {len(idx)} indices for {x.shape[0]} embeddings")
        _, first = np.unique(idx, return_index=True)
        first = np.sort(first)
        rows, new = idx[first], x.numpy()[first]
        memory = self.memory.numpy()  # shares storage with self.memory
        if 0.0 < self.mb_mom < 1.0:
            memory[rows] = self.mb_mom * memory[rows] + (1.0 - self.mb_mom) * new
        else:
            memory[rows] = new

    def memory_rows(self, indices: np.ndarray) -> np.ndarray:
        """Memory entries of *indices* as float64 numpy (N_idx x D)."""
        if self.memory is None:
            raise RuntimeError(
                f"sampler {self.name!r} keeps an embedding memory: call init_memory(embeddings) before iterating"
            )
        # numpy indexing on the shared storage: torch's parallel gather is slow for these sizes
        return self.memory.numpy()[np.asarray(indices, dtype=np.int64)].astype(np.float64)

    # ------------------------------------------------------------------ epochs and resume
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        super().set_epoch(epoch, start_batch)
        restored, self._restored = self._restored, None
        self._replay = restored[1] if restored is not None and restored[0] == epoch else {}

    def __iter__(self) -> Iterator[list[int]]:
        replay, self._replay = self._replay, {}
        self._generated = {}
        for index in range(self.start_batch, self.num_batches):
            if index in replay:
                batch = replay[index]
            else:
                with single_threaded_blas():
                    batch = self.make_batch(self.batch_rng(index))
            self._generated[index] = batch
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The memory and the batches of the current epoch generated so far (prefetched ones included)."""
        return {
            "memory": None if self.memory is None else self.memory.clone(),
            "epoch": self.epoch,
            "batches": {int(k): list(v) for k, v in self._generated.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        memory = state.get("memory")
        self.memory = None if memory is None else torch.as_tensor(memory, dtype=torch.float32).clone()
        if self.memory is not None and self.memory.shape[0] != len(self.labels):
            raise ValueError(f"sampler state has {self.memory.shape[0]} memory rows for {len(self.labels)} training samples")
        self._restored = (int(state.get("epoch", -1)), {int(k): list(v) for k, v in state.get("batches", {}).items()})

    # ------------------------------------------------------------------ helpers
    def class_wise_draw(self, draws: int, rng: np.random.Generator) -> np.ndarray:
        """*draws* class draws of samples_per_class samples each, as class_random (a class
        may be drawn twice, samples with replacement): draws * samples_per_class indices."""
        chosen = rng.integers(len(self.classes), size=draws)
        return np.concatenate([rng.choice(self.members[c], self.samples_per_class) for c in chosen])


class CoresetSampler(MemorySampler):
    """Shared plumbing of greedy_coreset and d2_coreset: per batch, a random subset of
    ``batchmatch_bigbs`` memory entries; :meth:`select` picks batch_size /
    samples_per_class positions in it; each picked sample is completed with
    samples_per_class - 1 same-class partners. Positions map to dataset indices
    through the same subset (the original used a different subset: its selection was
    effectively random)."""

    def __init__(self, labels, **kwargs):
        super().__init__(labels, **kwargs)
        self.num_anchors = self.batch_size // self.samples_per_class
        self.subset_size = min(self.bigbs, len(self.labels))
        if self.num_anchors > self.subset_size:
            raise ValueError(
                f"sampler.batchmatch_bigbs={self.bigbs} (or the {len(self.labels)} training images) is smaller than "
                f"batch_size / samples_per_class = {self.num_anchors}"
            )

    def make_batch(self, rng: np.random.Generator) -> list[int]:
        subset = rng.choice(len(self.labels), self.subset_size, replace=False)
        positions = self.select(self.memory_rows(subset), self.num_anchors, rng)
        return self.with_partners(subset[positions], rng)

    def select(self, x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """*k* distinct row positions of *x*."""
        raise NotImplementedError


class BatchMatchSampler(MemorySampler):
    """Shared plumbing of disthist_batchmatch and fid_batchmatch: per batch, a big batch
    of ``batchmatch_bigbs`` samples drawn class-wise (bigbs / samples_per_class class
    draws of samples_per_class samples); ``batchmatch_ncomps`` candidate batches, each
    a random choice of batch_size / samples_per_class of the big batch's class groups;
    the candidate whose embeddings match the big batch's best (lowest :meth:`cost`)
    is the batch."""

    PARAMS: ClassVar[tuple[str, ...]] = MemorySampler.PARAMS + ("batchmatch_ncomps",)

    def __init__(self, labels, *, batchmatch_ncomps: int = 10, **kwargs):
        super().__init__(labels, **kwargs)
        if batchmatch_ncomps < 1:
            raise ValueError(f"batchmatch_ncomps={batchmatch_ncomps} must be at least 1")
        self.ncomps = batchmatch_ncomps
        self.big_groups = self.bigbs // self.samples_per_class
        self.num_groups = self.batch_size // self.samples_per_class
        if self.big_groups < self.num_groups:
            raise ValueError(
                f"sampler.batchmatch_bigbs={self.bigbs} holds {self.big_groups} class groups, "
                f"fewer than the {self.num_groups} of a batch (batchmatch_bigbs must be >= batch_size)"
            )

    def candidates(self, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
        """The big batch (dataset indices) and the candidate batches (dataset indices)."""
        big = self.class_wise_draw(self.big_groups, rng)
        groups = big.reshape(self.big_groups, self.samples_per_class)
        cands = [groups[np.sort(rng.choice(self.big_groups, self.num_groups, replace=False))].reshape(-1)
                 for _ in range(self.ncomps)]
        return big, cands

    def candidate_costs(self, epoch: int, index: int) -> tuple[list[int], list[list[int]], list[float]]:
        """Big batch, candidates and their costs of batch *index* of *epoch*, from the current
        memory (for inspection and tests; the yielded batch is the lowest-cost candidate)."""
        saved = self.epoch
        self.epoch = epoch
        try:
            rng = self.batch_rng(index)
        finally:
            self.epoch = saved
        with single_threaded_blas():
            big, cands = self.candidates(rng)
            stats = self.summary(self.memory_rows(big))
            costs = [self.cost(stats, self.memory_rows(c)) for c in cands]
        return [int(i) for i in big], [[int(i) for i in c] for c in cands], costs

    def make_batch(self, rng: np.random.Generator) -> list[int]:
        big, cands = self.candidates(rng)
        stats = self.summary(self.memory_rows(big))
        costs = [self.cost(stats, self.memory_rows(c)) for c in cands]
        return [int(i) for i in cands[int(np.argmin(costs))]]

    def summary(self, big: np.ndarray) -> Any:
        """Statistics of the big batch's embeddings that :meth:`cost` compares against."""
        raise NotImplementedError

    def cost(self, big_summary: Any, candidate: np.ndarray) -> float:
        raise NotImplementedError
