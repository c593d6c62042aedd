"""Proxy-Anchor loss (Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020).

One trainable proxy p_c per training class. With s(x, p) the cosine similarity, X⁺_c the
embeddings of class c in the batch, X⁻_c the others, and C⁺ the classes present in the
batch, each proxy acts as an anchor of its class::

    L = 1/|C⁺| Σ_{c ∈ C⁺} log(1 + Σ_{x ∈ X⁺_c} e^{−α(s(x, p_c) − δ)})
      + 1/|C|  Σ_{c ∈ C}  log(1 + Σ_{x ∈ X⁻_c} e^{ α(s(x, p_c) + δ)})

with α = 32 and δ = 0.1 (the paper's values). Embeddings and proxies are L2-normalised
inside the loss (cosines need unit vectors); with the usual normalising architecture this
changes neither value nor gradient. The exponents stay within ±α(1 + δ), which must not
exceed 80 (float32's exp), so no max shift is needed.

Proxies are initialised with Kaiming-normal (fan-out), as the authors' code, and trained
with lr = optim.lr × lrmulti (100 by default, the paper's proxy learning rate) without
weight decay.
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

MAX_EXPONENT = 80.0


class _ProxyAnchor(torch.autograd.Function):
    """The loss in one autograd node, backward written out.

    With e⁺_i = e^{−α(s_{i,y_i} − δ)} (one per sample) and e⁻_ic = e^{α(s_ic + δ)} (c ≠ y_i)::

        ∂L/∂s_{i,y_i} = −α / |C⁺| · e⁺_i / (1 + Σ_{j: y_j = y_i} e⁺_j)
        ∂L/∂s_ic      =  α / |C|  · e⁻_ic / (1 + Σ_{j: y_j ≠ c} e⁻_jc)
    """

    @staticmethod
    def forward(ctx, x, proxies, labels, alpha, margin):
        x_unit, x_inverse, x_kept = normalize_last(x)
        p_unit, p_inverse, p_kept = normalize_last(proxies)
        cos = F.linear(x_unit, p_unit)
        target = labels.unsqueeze(1)
        pos_exp = cos.gather(1, target).sub_(margin).mul_(-alpha).exp_().squeeze(1)  # (B,)
        neg_exp = cos.add_(margin).mul_(alpha).exp_().scatter_(1, target, 0.0)  # (B, C), in place of the cosines
        num_classes = proxies.shape[0]
        pos_sum = pos_exp.new_zeros(num_classes).index_add_(0, labels, pos_exp)
        neg_sum = neg_exp.sum(0)
        with_positives = torch.bincount(labels, minlength=num_classes).count_nonzero().to(x.dtype)
        ctx.save_for_backward(x_unit, x_inverse, x_kept, p_unit, p_inverse, p_kept, pos_exp, neg_exp, pos_sum, neg_sum,
                              with_positives, target)
        ctx.alpha = alpha
        return pos_sum.log1p().sum() / with_positives + neg_sum.log1p().sum() / num_classes

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x_unit, x_inverse, x_kept, p_unit, p_inverse, p_kept, pos_exp, neg_exp, pos_sum, neg_sum, with_positives,
         target) = ctx.saved_tensors
        alpha, num_classes = ctx.alpha, neg_exp.shape[1]
        grad_cos = neg_exp.div(neg_sum.add(1.0)).mul_(grad * (alpha / num_classes))  # 0 at the targets
        grad_pos = pos_exp.div(pos_sum.add(1.0)[target.squeeze(1)]).mul_(-alpha * grad / with_positives)
        grad_cos.scatter_(1, target, grad_pos.unsqueeze(1))
        grad_x = normalize_last_backward(grad_cos @ p_unit, x_unit, x_inverse, x_kept)
        grad_proxies = normalize_last_backward(grad_cos.T @ x_unit, p_unit, p_inverse, p_kept)
        return grad_x, grad_proxies, None, None, None


@LOSSES.register("proxy_anchor")
class ProxyAnchorLoss(DMLLoss):
    name = "proxy_anchor"
    REQUIRES_MINER = False

    def __init__(self, num_classes: int, embed_dim: int, miner: Miner | None = None, *, margin: float = 0.1,
                 alpha: float = 32.0, lrmulti: float = 100.0):
        super().__init__(num_classes, embed_dim, miner)
        if alpha * (1.0 + abs(margin)) > MAX_EXPONENT:
            raise ValueError(f"proxy_anchor needs alpha * (1 + |margin|) <= {MAX_EXPONENT:g} (float32's exp), "
                             f"got alpha={alpha:g}, margin={margin:g}")
        self.margin = margin
        self.alpha = alpha
        self.lrmulti = lrmulti
        self.proxies = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        return [{"params": [self.proxies], "lr": base_lr * self.lrmulti, "weight_decay": 0.0,
                 "name": "loss.proxy_anchor.proxies"}]

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _ProxyAnchor.apply(embeddings, self.proxies.to(embeddings.dtype), labels, self.alpha, self.margin)
