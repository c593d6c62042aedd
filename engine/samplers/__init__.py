"""Batch samplers, looked up by name (config ``sampler.name``).

Public API (stable)::

    sampler = engine.samplers.from_config(config, train_labels)   # or create(name, labels, batch_size=..., ...)
    loader = DataLoader(dataset, batch_sampler=sampler, ...)
    if sampler.needs_memory:
        sampler.init_memory(train_embeddings)   # N x D, eval transform, before training
    sampler.set_epoch(epoch, start_batch=0)     # before each epoch (start_batch > 0: resume inside it)
    ...after each training step: sampler.update_memory(batch_indices, batch_embeddings.detach())
    sampler.state_dict() / sampler.load_state_dict(state)  # checkpoint / resume
    engine.samplers.list_samplers()             # the names the config accepts

A sampler is a ``batch_sampler`` for ``torch.utils.data.DataLoader``: it yields lists
of exactly ``batch_size`` dataset indices, ``len(dataset) // batch_size`` batches per
epoch. Samplers are seeded from (run seed, epoch[, batch index]) through
:meth:`~engine.samplers.base.BatchSampler.set_epoch`, so an epoch's batches are the
same whether the run was resumed or not. See :mod:`engine.samplers.base` for the
memory interface of the storage samplers.
"""

from __future__ import annotations

from engine.registry import Registry, import_package_modules

SAMPLERS: Registry[type] = Registry("sampler")


def create(name: str, labels, **params) -> object:
    """A sampler by name: ``create(name, labels, batch_size=..., samples_per_class=..., seed=..., **sampler_params)``."""
    return SAMPLERS.get(name)(labels, **params)


def from_config(config, labels) -> object:
    """The sampler of a full :class:`~engine.config.schema.Config` (``sampler`` section, ``run.seed``)."""
    return SAMPLERS.get(config.sampler.name).from_config(config, labels)


def list_samplers() -> list[str]:
    return SAMPLERS.names()


def needs_memory(name: str) -> bool:
    """Whether the sampler keeps an embedding memory (the trainer must call init_memory)."""
    return bool(getattr(SAMPLERS.get(name), "needs_memory", False))


import_package_modules(__name__, __path__)  # each module registers its sampler by name

from engine.samplers.base import BatchSampler, MemorySampler  # noqa: E402

__all__ = ["SAMPLERS", "BatchSampler", "MemorySampler", "create", "from_config", "list_samplers", "needs_memory"]
