"""SoftTriple loss (Qian et al., "SoftTriple Loss: Deep Metric Learning Without Triplet
Sampling", ICCV 2019).

K trainable centres w_c^k per class, each L2-normalised. For an embedding x (used as given;
the architecture normalises it) the similarity to class c is a soft maximum over its
centres::

    q_c^k   = softmax_k( x ᵀw_c^k / γ )          (over the K centres of class c)
    S_c     = Σ_k q_c^k · x ᵀw_c^k
    L_cls   = CE( λ (S − δ·onehot(y)), y )
    R       = Σ_c Σ_{k < k'} sqrt(2 + ε − 2 w_c^kᵀw_c^k') / (C·K·(K−1))     (ε = 1e-5)
    L       = L_cls + τ·R

with γ = 0.1, λ = 8, δ = 0.01, τ = 0.2 and K = 2 by default. R is 0 for K = 1.

The centres are stored as a (D, C·K) matrix (column c·K + k is centre k of class c),
initialised U(±1/√(C·K)), and trained with lr = optim.lr × lrmulti without weight decay.

Departures from the original code, on purpose (the published method):

* Each centre is L2-normalised (columns of the D×CK matrix); the original normalised each
  embedding dimension across all centres (``F.normalize(dim=1)``).
* The soft assignment is a softmax over the K centres of each class with scale 1/γ (= 10);
  the original took a softmax over the *classes* (dim 1) and multiplied by γ (= 0.1).
* The centre learning rate is optim.lr × lrmulti, as intended; the original read the
  non-existent flag ``loss_softtriplet_lr`` and crashed at construction.

The loss runs as a single autograd node with the backward written out (``_SoftTriple``);
:meth:`SoftTripleLoss.assignment` and :meth:`SoftTripleLoss.regulariser` compute the same
terms op by op, and the tests check the two against each other and against loops.
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

REG_EPS = 1e-5


class _SoftTriple(torch.autograd.Function):
    """L_cls + τ·R from the embeddings and the stored (D, C·K) centres, in one autograd node.

    The same math as :meth:`SoftTripleLoss.assignment` and :meth:`SoftTripleLoss.regulariser`
    (the float64 loop references of the tests check both paths), with the backward written
    out: recorded op by op (reorder, per-centre normalisation, softmax over K, margin,
    cross-entropy, regulariser), autograd's graph costs about a third more per step on CPU.

    Layout: the centres are reordered centre-major, ``unit[k, c] = ŵ_c^k``, so that the K
    centres of a class are an outer dimension of the similarities ``z`` (B, K, C); a
    softmax or sum over a trailing dimension of size K is many times slower on CPU.
    Gradients, with p = softmax(logits) and S, q, z as in the module docstring::

        ∂L/∂S_ic   = λ (p_ic − [c = y_i]) / B
        ∂S_c/∂z_ck = q_ck (1 + (z_ck − S_c) / γ)
        ∂r_ab/∂u_a = −u_b / r_ab                        (r_ab = sqrt(2 + ε − 2 u_aᵀu_b))
        ∂L/∂w      = (g − u (uᵀg) [‖w‖ ≥ eps]) / max(‖w‖, eps)   (F.normalize's; normalize_last_backward)
    """

    @staticmethod
    def forward(ctx, x, centres, labels, num_classes, k, gamma, lambda_, margin_delta, reg_coef):
        batch, dim = x.shape
        unit, inverse, kept = normalize_last(centres.reshape(dim, num_classes, k).permute(2, 1, 0).contiguous())  # (K, C, D)
        z = F.linear(x, unit.view(k * num_classes, dim)).view(batch, k, num_classes)
        q = torch.softmax(z * (1.0 / gamma), dim=1)
        class_sims = torch.linalg.vecdot(q, z, dim=1)  # S (B, C)
        target = labels.unsqueeze(1)
        logits = class_sims * lambda_
        logits.scatter_add_(1, target, logits.new_full((batch, 1), -lambda_ * margin_delta))
        loss = F.cross_entropy(logits, labels)
        dists = []  # r for the centre pairs (k, k + shift) of every class, one (K − shift, C) per shift
        if reg_coef != 0.0:
            for shift in range(1, k):
                dists.append(torch.linalg.vecdot(unit[:-shift], unit[shift:]).mul_(-2.0).add_(2.0 + REG_EPS).sqrt_())
                loss = loss + reg_coef * dists[-1].sum()
        ctx.save_for_backward(x, unit, inverse, kept, q, z, class_sims, logits, target, *dists)
        ctx.constants = (gamma, lambda_, reg_coef)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, unit, inverse, kept, q, z, class_sims, logits, target, *dists = ctx.saved_tensors
        gamma, lambda_, reg_coef = ctx.constants
        k, num_classes, dim = unit.shape
        batch = x.shape[0]
        grad_s = torch.softmax(logits, dim=1)
        grad_s.scatter_add_(1, target, grad_s.new_full((batch, 1), -1.0))
        grad_s.mul_(grad * (lambda_ / (batch * gamma)))  # ∂L/∂S, with the 1/γ of ∂S/∂z folded in
        grad_z = torch.sub(z, (class_sims - gamma).unsqueeze(1)).mul_(q).mul_(grad_s.unsqueeze(1))
        grad_z = grad_z.view(batch, k * num_classes)
        grad_x = torch.mm(grad_z, unit.view(k * num_classes, dim))
        grad_unit = torch.mm(grad_z.T, x).view(k, num_classes, dim)
        for shift, dist in enumerate(dists, start=1):
            weight = dist.reciprocal().mul_(-grad * reg_coef).unsqueeze(2)
            grad_unit[:-shift].addcmul_(unit[shift:], weight)
            grad_unit[shift:].addcmul_(unit[:-shift], weight)
        grad_centres = normalize_last_backward(grad_unit, unit, inverse, kept).permute(2, 1, 0).reshape(dim, num_classes * k)
        return grad_x, grad_centres, None, None, None, None, None, None, None


@LOSSES.register("softtriplet")
class SoftTripleLoss(DMLLoss):
    name = "softtriplet"
    REQUIRES_MINER = False

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        miner: Miner | None = None,
        *,
        n_centroids: int = 2,
        margin_delta: float = 0.01,
        gamma: float = 0.1,
        lambda_: float = 8.0,
        reg_weight: float = 0.2,
        lrmulti: float = 1.0,
    ):
        super().__init__(num_classes, embed_dim, miner)
        if n_centroids < 1:
            raise ValueError("softtriplet needs n_centroids >= 1")
        self.n_centroids = n_centroids
        self.margin_delta = margin_delta
        self.gamma = gamma
        self.lambda_ = lambda_
        self.reg_weight = reg_weight
        self.lrmulti = lrmulti
        n = num_classes * n_centroids
        bound = 1.0 / math.sqrt(n)
        self.centres = nn.Parameter(torch.empty(embed_dim, n).uniform_(-bound, bound))

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        return [{"params": [self.centres], "lr": base_lr * self.lrmulti, "weight_decay": 0.0, "name": "loss.softtriplet.centres"}]

    def normalized_centres(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(C, K, D) unit-norm centres."""
        centres = self.centres if dtype is None else self.centres.to(dtype)
        return F.normalize(centres, dim=0).T.reshape(self.num_classes, self.n_centroids, self.embed_dim)

    def assignment(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights q, similarities xᵀw), each (B, C, K); q sums to 1 over the K centres of a class."""
        centres = self.normalized_centres(embeddings.dtype)
        sims = torch.einsum("bd,ckd->bck", embeddings, centres)
        return torch.softmax(sims / self.gamma, dim=2), sims

    def regulariser(self, dtype: torch.dtype) -> torch.Tensor:
        k = self.n_centroids
        centres = self.normalized_centres(dtype)
        if k < 2:
            return centres.sum() * 0.0
        gram = centres @ centres.transpose(1, 2)  # (C, K, K)
        upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=gram.device), diagonal=1)
        dist = torch.sqrt((2.0 + REG_EPS - 2.0 * gram[:, upper]).clamp_min(0.0))
        return dist.sum() / (self.num_classes * k * (k - 1))

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        k = self.n_centroids
        reg_coef = self.reg_weight / (self.num_classes * k * (k - 1)) if k > 1 and self.reg_weight > 0 else 0.0
        return _SoftTriple.apply(embeddings, self.centres.to(embeddings.dtype), labels, self.num_classes, k,
                                 self.gamma, self.lambda_, self.margin_delta, reg_coef)
