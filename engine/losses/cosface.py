"""CosFace, large margin cosine loss (Wang et al., "CosFace: Large Margin Cosine Loss for Deep
Face Recognition", CVPR 2018).

One trainable weight vector per training class. With x̂ and the rows ŵ_c of W
L2-normalised and c_j = x̂ᵀŵ_j, the target cosine loses an additive margin::

    logits = s · (c_j − m·[j = y])        L = CE(logits, y)        (s = 64, m = 0.35)

(the paper's values). W is initialised U(±1/√D) and trained with lr = optim.lr × lrmulti
without weight decay.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from engine.losses import LOSSES
from engine.losses.base import DMLLoss, normalize_last, normalize_last_backward
from engine.miners import Miner


class _CosFace(torch.autograd.Function):
    """The loss in one autograd node: ∂L/∂c = s (softmax(logits) − onehot(y)) / B."""

    @staticmethod
    def forward(ctx, x, weight, labels, margin, scale):
        x_unit, x_inverse, x_kept = normalize_last(x)
        w_unit, w_inverse, w_kept = normalize_last(weight)
        logits = F.linear(x_unit, w_unit).mul_(scale)
        target = labels.unsqueeze(1)
        logits.scatter_add_(1, target, logits.new_full(target.shape, -scale * margin))
        log_p = torch.log_softmax(logits, dim=1)
        ctx.save_for_backward(x_unit, x_inverse, x_kept, w_unit, w_inverse, w_kept, log_p, target)
        ctx.scale = scale
        return -log_p.gather(1, target).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x_unit, x_inverse, x_kept, w_unit, w_inverse, w_kept, log_p, target = ctx.saved_tensors
        grad_cos = log_p.exp_()  # log_p is not needed any more
        grad_cos.scatter_add_(1, target, grad_cos.new_full(target.shape, -1.0))
        grad_cos.mul_(grad * (ctx.scale / len(target)))
        grad_x = normalize_last_backward(grad_cos @ w_unit, x_unit, x_inverse, x_kept)
        grad_weight = normalize_last_backward(grad_cos.T @ x_unit, w_unit, w_inverse, w_kept)
        return grad_x, grad_weight, None, None, None


@LOSSES.register("cosface")
class CosFaceLoss(DMLLoss):
    name = "cosface"
    REQUIRES_MINER = False

    def __init__(self, num_classes: int, embed_dim: int, miner: Miner | None = None, *, margin: float = 0.35,
                 scale: float = 64.0, lrmulti: float = 1.0):
        super().__init__(num_classes, embed_dim, miner)
        self.margin = margin
        self.scale = scale
        self.lrmulti = lrmulti
        bound = 1.0 / math.sqrt(embed_dim)
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim).uniform_(-bound, bound))

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        return [{"params": [self.weight], "lr": base_lr * self.lrmulti, "weight_decay": 0.0, "name": "loss.cosface.weight"}]

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _CosFace.apply(embeddings, self.weight.to(embeddings.dtype), labels, self.margin, self.scale)
