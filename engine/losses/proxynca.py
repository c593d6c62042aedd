"""ProxyNCA (Movshovitz-Attias et al., "No Fuss Distance Metric Learning using Proxies",
ICCV 2017).

One trainable proxy p_c per training class. Embeddings and proxies are rescaled to norm 3,
x̃ = 3x/‖x‖ and p̃ = 3p/‖p‖, and with d_ic = ‖x̃_i − p̃_c‖²::

    L = mean_i [ d_{i,y_i} + log Σ_{c ≠ y_i} exp(−d_ic) ]
      = mean_i −log( exp(−d_{i,y_i}) / Σ_{c ≠ y_i} exp(−d_ic) )

i.e. NCA with the positive proxy left out of the denominator. That is the paper's
definition (Eq. 4 of Movshovitz-Attias et al.) and also what the original code does; the
variant with the positive in the denominator (a plain softmax cross-entropy) is *not* used.
The norm 3 of both sides is the scaling of the original code (and of the common ProxyNCA
implementations); it acts as the softmax temperature. The loss can be negative.

As both sides have norm 3, d_ic = 18 − 18·cos(x_i, p_c), and the constant 18 cancels
between the two terms; the code evaluates the same loss as

    L = mean_i [ −18 cos_{i,y_i} + log Σ_{c ≠ y_i} exp(18 cos_ic) ]

on a cosine matrix (one matrix product; the logits lie within ±18, so the log-sum-exp
needs no max shift). Only a proxy of norm < 1e-12 would differ: normalisation leaves it
(near) zero, which this form treats as d = 18 (cosine 0) and the distance form as d = 9.

Proxies are initialised from randn/8 and trained with lr = optim.lr × lrmulti (50 by
default, i.e. 5e-4 with the original's base lr 1e-5), without weight decay, as in the
original. Departures from the original code: none in the math. With a single class there
is no negative proxy; the loss is then 0 with a working backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from engine.losses import LOSSES
from engine.losses.base import DMLLoss, normalize_last, normalize_last_backward
from engine.miners import Miner

SCALE = 3.0
LOGIT_SCALE = 2.0 * SCALE**2  # 2 x̃ᵀp̃ = 18 cos


class _ProxyNCA(torch.autograd.Function):
    """The loss (cosine form, see the module docstring) in one autograd node, backward written out.

    With a = 18 cos and the positive left out of the denominator, ∂L/∂a_ic = (softmax over
    the negatives of row i)_c for c ≠ y_i and −1 for c = y_i, divided by B; recorded op by
    op, autograd's graph of the same steps costs about a quarter more per step on CPU.
    """

    @staticmethod
    def forward(ctx, x, proxies, labels):
        x_unit, x_inverse, x_kept = normalize_last(x)
        p_unit, p_inverse, p_kept = normalize_last(proxies)
        logits = F.linear(x_unit, p_unit).mul_(LOGIT_SCALE)
        target = labels.unsqueeze(1)
        negatives = logits.exp().scatter_(1, target, 0.0)  # |logits| <= 18: no overflow, no max shift needed
        denominator = negatives.sum(1, keepdim=True)
        ctx.save_for_backward(x_unit, x_inverse, x_kept, p_unit, p_inverse, p_kept, negatives, denominator, target)
        return (denominator.log() - logits.gather(1, target)).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x_unit, x_inverse, x_kept, p_unit, p_inverse, p_kept, negatives, denominator, target = ctx.saved_tensors
        grad_logits = negatives.div(denominator).scatter_(1, target, -1.0).mul_(grad * (LOGIT_SCALE / len(target)))
        grad_x = normalize_last_backward(grad_logits @ p_unit, x_unit, x_inverse, x_kept)
        grad_proxies = normalize_last_backward(grad_logits.T @ x_unit, p_unit, p_inverse, p_kept)
        return grad_x, grad_proxies, None


@LOSSES.register("proxynca")
class ProxyNCALoss(DMLLoss):
    name = "proxynca"
    REQUIRES_MINER = False

    def __init__(self, num_classes: int, embed_dim: int, miner: Miner | None = None, *, lrmulti: float = 50.0):
        super().__init__(num_classes, embed_dim, miner)
        self.lrmulti = lrmulti
        self.proxies = nn.Parameter(torch.randn(num_classes, embed_dim) / 8)

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        return [{"params": [self.proxies], "lr": base_lr * self.lrmulti, "weight_decay": 0.0, "name": "loss.proxynca.proxies"}]

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.num_classes < 2:
            return self.zero(embeddings) + self.zero(self.proxies)
        return _ProxyNCA.apply(embeddings, self.proxies.to(embeddings.dtype), labels)
