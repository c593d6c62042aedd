"""Sub-center ArcFace (Deng et al., "Sub-center ArcFace: Boosting Face Recognition by
Large-scale Web Faces", ECCV 2020).

K trainable sub-centres per training class. With x̂ and every sub-centre ŵ_c^k
L2-normalised, the cosine to class c is the best of its sub-centres, and the target gets
ArcFace's additive angular margin (as :mod:`engine.losses.arcface`)::

    c_j    = max_k x̂ᵀŵ_j^k                        θ_y = arccos(c_y)
    φ_y    = cos(θ_y + m)   if c_y > cos(π − m),   c_y − m·sin(m) otherwise
    logits = s · (c_j for j ≠ y, φ_y for j = y)   L = CE(logits, y)

with K = 3, s = 64 and m = 0.5 rad (the paper's values). The gradient of c_j flows into
the sub-centre that attains the maximum. The sub-centres are stored as a (K, C, D) tensor
(``weight[k, c]`` is sub-centre k of class c), initialised U(±1/√D) and trained with
lr = optim.lr × lrmulti without weight decay.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from engine.losses import LOSSES
from engine.losses.arcface import ACOS_EPS
from engine.losses.base import DMLLoss, normalize_last, normalize_last_backward
from engine.miners import Miner


class _SubCenterArcFace(torch.autograd.Function):
    """The loss in one autograd node, backward written out (as ``_ArcFace``, plus the max over sub-centres).

    ∂L/∂c = s (p − onehot(y)) / B with the target column times ∂φ/∂c_y (see ``_ArcFace``); it is
    routed to the sub-centre that attains the maximum of every (sample, class) (to each of them on an exact
    tie, which continuous embeddings and weights do not produce).
    """

    @staticmethod
    def forward(ctx, x, weight, labels, margin, scale, threshold, fallback_shift):
        k, num_classes, dim = weight.shape
        x_unit, x_inverse, x_kept = normalize_last(x)
        w_unit, w_inverse, w_kept = normalize_last(weight)
        all_cos = F.linear(x_unit, w_unit.view(k * num_classes, dim)).view(len(x), k, num_classes)
        class_cos = all_cos.amax(dim=1)  # (B, C) class cosines; amax and an equality mask beat max's indices on CPU
        logits = class_cos * scale
        target = labels.unsqueeze(1)
        cos_y = class_cos.gather(1, target)
        clamped = cos_y.clamp(-1.0 + ACOS_EPS, 1.0 - ACOS_EPS)
        shifted = torch.acos(clamped).add_(margin)  # θ_y + m
        regular = cos_y > threshold
        phi_y = torch.where(regular, torch.cos(shifted), cos_y - fallback_shift)
        logits.scatter_(1, target, phi_y.mul_(scale))
        log_p = torch.log_softmax(logits, dim=1)
        dphi = torch.where(regular, torch.sin(shifted).div_(torch.sqrt(1.0 - clamped * clamped)).mul_(cos_y == clamped), 1.0)
        ctx.save_for_backward(x_unit, x_inverse, x_kept, w_unit, w_inverse, w_kept, log_p, target, dphi, all_cos, class_cos)
        ctx.scale = scale
        return -log_p.gather(1, target).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x_unit, x_inverse, x_kept, w_unit, w_inverse, w_kept, log_p, target, dphi, all_cos, class_cos = ctx.saved_tensors
        batch, num_classes = log_p.shape
        k, dim = w_unit.shape[0], w_unit.shape[2]
        grad_cos = log_p.exp()
        grad_cos.scatter_add_(1, target, grad_cos.new_full((batch, 1), -1.0))
        grad_cos.mul_(grad * (ctx.scale / batch))
        grad_cos.scatter_(1, target, grad_cos.gather(1, target).mul_(dphi))
        grad_all = (all_cos == class_cos.unsqueeze(1)).mul(grad_cos.unsqueeze(1)).view(batch, k * num_classes)
        grad_x = normalize_last_backward(grad_all @ w_unit.view(k * num_classes, dim), x_unit, x_inverse, x_kept)
        grad_weight = normalize_last_backward((grad_all.T @ x_unit).view(k, num_classes, dim), w_unit, w_inverse, w_kept)
        return grad_x, grad_weight, None, None, None, None, None


@LOSSES.register("subcenter_arcface")
class SubCenterArcFaceLoss(DMLLoss):
    name = "subcenter_arcface"
    REQUIRES_MINER = False

    def __init__(self, num_classes: int, embed_dim: int, miner: Miner | None = None, *, sub_centers: int = 3,
                 angular_margin: float = 0.5, feature_scale: float = 64.0, lrmulti: float = 1.0):
        super().__init__(num_classes, embed_dim, miner)
        if sub_centers < 1:
            raise ValueError("subcenter_arcface needs sub_centers >= 1")
        self.sub_centers = sub_centers
        self.angular_margin = angular_margin
        self.feature_scale = feature_scale
        self.lrmulti = lrmulti
        self.threshold = math.cos(math.pi - angular_margin)
        self.fallback_shift = math.sin(math.pi - angular_margin) * angular_margin
        bound = 1.0 / math.sqrt(embed_dim)
        self.weight = nn.Parameter(torch.empty(sub_centers, num_classes, embed_dim).uniform_(-bound, bound))

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        return [{"params": [self.weight], "lr": base_lr * self.lrmulti, "weight_decay": 0.0,
                 "name": "loss.subcenter_arcface.weight"}]

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _SubCenterArcFace.apply(embeddings, self.weight.to(embeddings.dtype), labels, self.angular_margin,
                                       self.feature_scale, self.threshold, self.fallback_shift)
