"""Base class of the DML losses."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from engine.miners import Miner

NORM_EPS = 1e-12  # as F.normalize


def unit_rows(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale * F.normalize(x, dim=1)``: each row times scale / max(‖row‖, 1e-12).

    Multiplying by a per-row reciprocal instead of dividing (and folding the scale into
    it) gives the same values with a cheaper backward; the proxy losses call it per step.
    """
    inverse = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(NORM_EPS).reciprocal()
    return x * (inverse if scale == 1.0 else inverse * scale)


def cosines_against(embeddings: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """(B, R) cosine similarities; the batch is normalised once when it is its own reference set."""
    unit = unit_rows(embeddings)
    return unit @ (unit if references is embeddings else unit_rows(references)).T


def logsumexp_over(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log Σ_{mask} e^{values} per row; −inf for a row without any True entry, with a zero (not NaN) gradient."""
    kept = mask.any(1)
    masked = values.masked_fill(~mask, float("-inf")).masked_fill(~kept[:, None], 0.0)
    return torch.logsumexp(masked, dim=1).masked_fill(~kept, float("-inf"))


def reference_masks(labels: torch.Tensor, reference_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positives, negatives), each (B, R) bool, of anchors against references whose first B rows are the batch.

    Positives share the anchor's class, negatives do not; the anchor itself (column i of row i) is in neither.
    """
    same = labels[:, None] == reference_labels[None, :]
    negatives = ~same
    same[:, : len(labels)].diagonal().fill_(False)
    return same, negatives


def anchor_mean(per_anchor: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of the per-anchor terms over the anchors *valid* marks (those with a positive, say); 0 when none is.

    The anchors left out may hold ±inf (a log-sum-exp over nothing): they are dropped, not multiplied by 0 (NaN).
    """
    return torch.where(valid, per_anchor, 0.0).sum() / valid.sum().clamp_min(1)


def normalize_last(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F.normalize over the last dimension for a backward written by hand (no autograd).

    Returns (unit vectors, 1 / max(‖x‖, eps), ‖x‖ >= eps); the last two keep that dimension.
    """
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    inverse = norm.clamp_min(NORM_EPS).reciprocal_()
    return x * inverse, inverse, norm >= NORM_EPS


def normalize_last_backward(grad: torch.Tensor, unit: torch.Tensor, inverse: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The gradient through :func:`normalize_last`, (g − u (uᵀg) [‖x‖ ≥ eps]) / max(‖x‖, eps); overwrites *grad*."""
    radial = torch.linalg.vecdot(unit, grad).unsqueeze(-1).mul_(kept)
    return grad.addcmul_(unit, radial, value=-1.0).mul_(inverse)


class DMLLoss(nn.Module):
    """A loss called as ``loss(embeddings, labels) -> scalar``.

    Class attributes declare what the loss needs:

    * ``REQUIRES_MINER``: the loss consumes mined tuples.
    * ``MINER_OUTPUTS``: the tuple structures it accepts (``Miner.OUTPUT``).
    * ``REFERENCES``: a pair loss that compares the batch's anchors with any reference
      set (:meth:`compute_against`); with the tuple losses, these are the losses that the
      cross-batch memory (``loss.xbm``) can feed.

    Trainable parameters of the loss (margin betas, proxies, class weights) go into
    their own optimizer groups, returned by :meth:`param_groups`. The math always
    runs in float32, also under autocast, and a batch without any valid tuple
    gives a zero loss that still backpropagates.
    """

    name: ClassVar[str]
    REQUIRES_MINER: ClassVar[bool] = False
    MINER_OUTPUTS: ClassVar[tuple[str, ...]] = ()
    REFERENCES: ClassVar[bool] = False

    def __init__(self, num_classes: int, embed_dim: int, miner: Miner | None = None):
        super().__init__()
        if self.REQUIRES_MINER and miner is None:
            raise ValueError(f"loss {self.name!r} needs a miner")
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.miner = miner

    @classmethod
    def from_config(cls, config, num_classes: int, miner: Miner | None) -> DMLLoss:
        """Build from a full config; by default from the ``loss.<name>`` section (if any)."""
        section = getattr(config.loss, cls.name, None)
        params = section.model_dump() if section is not None else {}
        return cls(num_classes, config.model.embed_dim, miner, **params)

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Optimizer groups of the loss's own parameters (none by default)."""
        return []

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Half-precision inputs (autocast) are upcast; float64 stays float64 (for exact checks).
        if embeddings.dtype != torch.float64:
            embeddings = embeddings.float()
        device_type = embeddings.device.type
        if not torch.is_autocast_enabled(device_type):  # entering the context costs more than a cheap loss step
            return self.compute(embeddings, labels)
        with torch.autocast(device_type=device_type, enabled=False):
            return self.compute(embeddings, labels)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of the batch; a ``REFERENCES`` loss's is its :meth:`compute_against` with the batch as the
        reference set, so those losses implement only that."""
        return self.compute_against(embeddings, labels, embeddings, labels)

    @classmethod
    def accepts_memory(cls) -> bool:
        """Whether ``loss.xbm`` can feed the loss: tuple losses (through their miner) and ``REFERENCES`` pair losses."""
        return cls.REQUIRES_MINER or cls.REFERENCES

    def compute_against(self, embeddings: torch.Tensor, labels: torch.Tensor, references: torch.Tensor,
                        reference_labels: torch.Tensor) -> torch.Tensor:
        """The loss of the batch's anchors against *references*, whose first ``len(embeddings)`` rows are the batch
        itself (``REFERENCES`` losses)."""
        raise NotImplementedError

    @staticmethod
    def zero(embeddings: torch.Tensor) -> torch.Tensor:
        """A zero that keeps the graph connected (backward works, gradients are zero)."""
        return embeddings.sum() * 0.0
