"""ArcFace, additive angular margin (Deng et al., "ArcFace: Additive Angular Margin Loss for
Deep Face Recognition", CVPR 2019).

One trainable weight vector per training class. With x̂ and the rows ŵ_c of W
L2-normalised, c_j = x̂ᵀŵ_j is the cosine to class j and θ_y = arccos(c_y) the angle to the
true class. Only the target logit gets the margin::

    φ_y    = cos(θ_y + m)     if θ_y + m < π   (i.e. c_y > cos(π − m))
           = c_y − m·sin(m)   otherwise        (= c_y − sin(π − m)·m)
    logits = s · (c_j for j ≠ y, φ_y for j = y)
    L      = CE(logits, y)                     (s = 16, m = 0.5 rad)

The fallback keeps the target logit monotonically decreasing in θ_y where cos(θ + m) would
turn back up (θ + m > π); it is the authors' published implementation (insightface,
``easy_margin=False``: ``th = cos(π − m)``, ``mm = sin(π − m)·m``). The cosine is clamped to
[−1 + ε, 1 − ε] only inside arccos, for a finite gradient; the logits use the raw cosines.

W is initialised U(±1/√D) and trained with its own learning rate (``loss.arcface.lr``,
5e-4 by default), without weight decay, as in the original.

Departures from the original code, on purpose (the published method):

* Cosines are not clamped to [1e-10, 1 − 1e-10]: the original's lower bound floored every
  negative cosine to ~0 (logit 0) for all classes, so negative cosines gave no gradient.
* The margin goes into the target logit only (the original's fixed version, 703d189).
  Before that fix the shift cos(θ_y + m) − c_y was added to every logit of the row, a
  per-row constant that cancels in the softmax: the ArcFace numbers of the paper were
  therefore effectively NormSoftmax (s = 16, clamped cosines, class-weight lr 5e-4).
* The θ + m > π fallback above (the original used cos(θ + m) everywhere, which rewards
  moving away from the class centre once θ_y > π − m).
* The embeddings are L2-normalised inside the loss (cosines need unit vectors, as in the
  paper); with the usual normalising architecture this changes neither value nor gradient.

The loss runs as a single autograd node with the backward written out (``_ArcFace``);
:meth:`ArcFaceLoss.logits` gives the same logits op by op, and the tests check the two
against each other and against loops.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from engine.losses import LOSSES
from engine.losses.base import DMLLoss, normalize_last, normalize_last_backward, unit_rows
from engine.miners import Miner

ACOS_EPS = 1e-7


class _ArcFace(torch.autograd.Function):
    """The loss from the embeddings and W in one autograd node, with the backward written out.

    The same math as ``F.cross_entropy(ArcFaceLoss.logits(...))`` (the tests compare the two
    and check both against loops); autograd's graph of that form costs about a fifth more
    per step on CPU (mostly the gather/scatter and the few ops on the target column).
    With p = softmax(logits), the gradient of the logits is s (p − onehot(y)) / B, and the
    target column is multiplied by ∂φ/∂c_y:

        sin(θ_y + m) / sin(θ_y)   if c_y > cos(π − m), 0 where the clamp of c_y is active
        1                          otherwise (the fallback c_y − m·sin(m))
    """

    @staticmethod
    def forward(ctx, x, weight, labels, margin, scale, threshold, fallback_shift):
        x_unit, x_inverse, x_kept = normalize_last(x)
        w_unit, w_inverse, w_kept = normalize_last(weight)
        logits = F.linear(x_unit, w_unit)  # the cosines, scaled in place below
        target = labels.unsqueeze(1)
        cos_y = logits.gather(1, target)
        clamped = cos_y.clamp(-1.0 + ACOS_EPS, 1.0 - ACOS_EPS)
        shifted = torch.acos(clamped).add_(margin)  # θ_y + m
        regular = cos_y > threshold
        phi_y = torch.where(regular, torch.cos(shifted), cos_y - fallback_shift)
        logits.mul_(scale).scatter_(1, target, phi_y.mul_(scale))
        log_p = torch.log_softmax(logits, dim=1)
        dphi = torch.where(regular, torch.sin(shifted).div_(torch.sqrt(1.0 - clamped * clamped)).mul_(cos_y == clamped), 1.0)
        ctx.save_for_backward(x_unit, x_inverse, x_kept, w_unit, w_inverse, w_kept, log_p, target, dphi)
        ctx.scale = scale
        return -log_p.gather(1, target).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x_unit, x_inverse, x_kept, w_unit, w_inverse, w_kept, log_p, target, dphi = ctx.saved_tensors
        batch = log_p.shape[0]
        grad_cos = log_p.exp()
        grad_cos.scatter_add_(1, target, grad_cos.new_full((batch, 1), -1.0))
        grad_cos.mul_(grad * (ctx.scale / batch))
        grad_cos.scatter_(1, target, grad_cos.gather(1, target).mul_(dphi))
        grad_x = normalize_last_backward(grad_cos @ w_unit, x_unit, x_inverse, x_kept)
        grad_weight = normalize_last_backward(grad_cos.T @ x_unit, w_unit, w_inverse, w_kept)
        return grad_x, grad_weight, None, None, None, None, None


@LOSSES.register("arcface")
class ArcFaceLoss(DMLLoss):
    name = "arcface"
    REQUIRES_MINER = False

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        miner: Miner | None = None,
        *,
        lr: float = 5e-4,
        angular_margin: float = 0.5,
        feature_scale: float = 16.0,
    ):
        super().__init__(num_classes, embed_dim, miner)
        self.lr = lr
        self.angular_margin = angular_margin
        self.feature_scale = feature_scale
        self.threshold = math.cos(math.pi - angular_margin)
        self.fallback_shift = math.sin(math.pi - angular_margin) * angular_margin
        bound = 1.0 / math.sqrt(embed_dim)
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim).uniform_(-bound, bound))

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        return [{"params": [self.weight], "lr": self.lr, "weight_decay": 0.0, "name": "loss.arcface.weight"}]

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, C) cosines between the embeddings and the class weights (unclamped)."""
        return F.linear(unit_rows(embeddings), unit_rows(self.weight.to(embeddings.dtype)))

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosines(embeddings)
        target = labels[:, None]
        cos_y = cos.gather(1, target)  # (B, 1): the margin only touches this column
        theta_y = torch.acos(cos_y.clamp(-1.0 + ACOS_EPS, 1.0 - ACOS_EPS))
        phi_y = torch.where(cos_y > self.threshold, torch.cos(theta_y + self.angular_margin), cos_y - self.fallback_shift)
        return self.feature_scale * cos.scatter(1, target, phi_y)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _ArcFace.apply(embeddings, self.weight.to(embeddings.dtype), labels, self.angular_margin,
                              self.feature_scale, self.threshold, self.fallback_shift)
