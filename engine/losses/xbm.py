"""Cross-batch memory, XBM (Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020).

A FIFO memory of the last ``size`` (detached) embeddings and their labels lets the batch's
anchors meet positives and negatives of past batches. From training step
``start_iteration`` on (counted from 0; the paper starts after 1,000 steps, once the
embedding drifts slowly), every step computes::

    L = L(batch, batch) + λ · L(batch anchors, batch ∪ memory)

and then enqueues the batch, dropping the oldest entries beyond ``size``. The memory term
takes its anchors from the batch and its positives and negatives from the reference set
``cat(batch, memory)``, the memory holding the embeddings of earlier steps only (so no
sample meets a stored copy of itself):

* pair losses (``REFERENCES``: multisimilarity, supcon, ntxent, circle, fastap, smoothap)
  compare the anchors with the references through ``compute_against``;
* tuple losses run unchanged on the reference set, through the existing miner interface:
  their miner sees the whole reference set (embeddings and labels) and
  :class:`BatchAnchorMiner` keeps the tuples whose anchor is in the batch. Batch-level
  terms of such a loss (e.g. npair's norm regulariser) then run over the reference set.

Proxy and classification losses have no pairs to extend; ``loss.xbm`` refuses them.

The memory (embeddings, labels, write pointer, fill, step counter) is made of buffers of
this module, which wraps the loss: it is part of the loss's state dict, so checkpoints keep
it and a resumed run continues with the same memory. Under DDP the trainer gathers every
rank's embeddings and labels before the loss (:func:`engine.distributed.gather_with_grad`),
so each rank enqueues the same global batch and all ranks hold the same memory.

The module lives beside the losses rather than the miners because it wraps a loss: it owns
the second loss term and its state, and only borrows the miner of the loss it wraps.
"""

from __future__ import annotations

from typing import Any

import torch

from engine import catalog
from engine.losses.base import DMLLoss
from engine.miners.base import AnchorSets, Miner, Triplets


class BatchAnchorMiner(Miner):
    """Runs *miner* on the reference set ``cat(batch, memory)`` and keeps the tuples anchored in the batch."""

    name = "batch_anchors"

    def __init__(self, miner: Miner, batch_size: int):
        self.miner = miner
        self.batch_size = batch_size
        self.OUTPUT = miner.OUTPUT

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets | AnchorSets:
        tuples = self.miner.mine(embeddings, labels)
        keep = tuples.anchors < self.batch_size
        return type(tuples)(tuples.anchors[keep], tuples.positives[keep], tuples.negatives[keep])

    def __repr__(self) -> str:
        return f"BatchAnchorMiner({self.miner!r}, batch_size={self.batch_size})"


class CrossBatchMemory(DMLLoss):
    """The wrapped loss plus the weighted memory term; the memory lives in this module's buffers."""

    name = "xbm"

    def __init__(self, loss: DMLLoss, *, size: int = 8192, start_iteration: int = 1000, weight: float = 1.0):
        super().__init__(loss.num_classes, loss.embed_dim, None)
        if not loss.accepts_memory():
            raise ValueError(catalog.memory_error(loss.name))
        if size < 1:
            raise ValueError(f"loss.xbm.size must be >= 1, got {size}")
        self.loss = loss
        self.start_iteration = start_iteration
        self.weight = weight
        self.register_buffer("memory_embeddings", torch.zeros(size, loss.embed_dim))
        self.register_buffer("memory_labels", torch.zeros(size, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))  # the next slot to write
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # slots holding an embedding
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))  # training steps seen

    @property
    def size(self) -> int:
        return self.memory_embeddings.shape[0]

    @property
    def beta(self) -> torch.Tensor | None:
        """The wrapped loss's margin boundaries, if it has any (the trainer logs their mean)."""
        return getattr(self.loss, "beta", None)

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        return self.loss.param_groups(base_lr)

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the stored (embeddings, labels), oldest first."""
        filled, pointer = int(self.filled), int(self.pointer)
        if filled < self.size:
            return self.memory_embeddings[:filled].clone(), self.memory_labels[:filled].clone()
        order = torch.cat([torch.arange(pointer, self.size), torch.arange(pointer)]).to(self.pointer.device)
        return self.memory_embeddings[order], self.memory_labels[order]

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Append the rows after the newest entry, overwriting the oldest once the memory is full (of a batch larger
        than the memory, only its last ``size`` rows stay, in the slots they would have reached)."""
        count = len(labels)
        kept = min(count, self.size)
        start = self.pointer + (count - kept)
        slots = (start + torch.arange(kept, device=self.pointer.device)) % self.size
        self.memory_embeddings[slots] = embeddings[count - kept :].detach().to(self.memory_embeddings.dtype)
        self.memory_labels[slots] = labels[count - kept :].to(self.memory_labels.device)
        self.pointer.copy_((self.pointer + count) % self.size)
        self.filled.copy_((self.filled + count).clamp(max=self.size))

    def memory_term(self, embeddings: torch.Tensor, labels: torch.Tensor, references: torch.Tensor,
                    reference_labels: torch.Tensor) -> torch.Tensor:
        """L(batch anchors, references); the first len(embeddings) references are the batch itself."""
        if self.loss.REFERENCES:
            return self.loss.compute_against(embeddings, labels, references, reference_labels)
        miner = self.loss.miner
        self.loss.miner = BatchAnchorMiner(miner, len(embeddings))
        try:
            return self.loss.compute(references, reference_labels)
        finally:
            self.loss.miner = miner

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.loss.compute(embeddings, labels)
        active = int(self.iteration) >= self.start_iteration
        self.iteration += 1
        if not active:
            return loss
        memory, memory_labels = self.contents()
        references = torch.cat([embeddings, memory.to(embeddings.dtype)])
        reference_labels = torch.cat([labels, memory_labels.to(labels.device)])
        loss = loss + self.weight * self.memory_term(embeddings, labels, references, reference_labels)
        self.enqueue(embeddings, labels)
        return loss
