"""Base class of batch miners and the tuple structures they return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True)
class Triplets:
    """Index tensors (into the batch) of mined (anchor, positive, negative) triplets."""

    anchors: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor

    def __len__(self) -> int:
        return int(self.anchors.numel())

    @staticmethod
    def empty(device: torch.device) -> Triplets:
        none = torch.empty(0, dtype=torch.long, device=device)
        return Triplets(none, none, none)


@dataclass(frozen=True)
class AnchorSets:
    """Per-anchor positive and negative sets as boolean masks over the batch.

    ``npair`` miners put exactly one positive in each row; ``lifted`` miners every
    same-class sample except the anchor. Ragged sets (a class drawn twice in a batch)
    are just rows with more True entries, so losses stay vectorised.
    """

    anchors: torch.Tensor  # (A,) batch indices
    positives: torch.Tensor  # (A, B) bool
    negatives: torch.Tensor  # (A, B) bool

    def __len__(self) -> int:
        return int(self.anchors.numel())


class Miner:
    """Turns a batch of embeddings and labels into tuples for a loss.

    Miners never see gradients: they receive detached embeddings. ``OUTPUT`` names
    the tuple structure, which losses check for compatibility.
    """

    name: ClassVar[str]
    OUTPUT: ClassVar[str] = "triplets"

    @classmethod
    def from_config(cls, config) -> Miner:
        """Build from a full config; by default from the ``miner.<name>`` section (if any)."""
        section = getattr(config.miner, cls.name, None)
        return cls(**section.model_dump()) if section is not None else cls()

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets | AnchorSets:
        with torch.no_grad():
            return self.mine(embeddings.detach().float(), labels)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets | AnchorSets:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix, exact zeros on the diagonal and no negative round-off."""
    squared = x.pow(2).sum(1)
    d2 = (squared[:, None] + squared[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    d2.fill_diagonal_(0.0)
    return d2.sqrt()


def random_positives(labels: torch.Tensor) -> torch.Tensor:
    """For every sample, a uniformly drawn other sample of its class (itself when it is alone)."""
    n = labels.numel()
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    scores = torch.rand(n, n, device=labels.device).masked_fill(~same, -1.0)
    positives = scores.argmax(1)
    alone = ~same.any(1)
    return torch.where(alone, torch.arange(n, device=labels.device), positives)
