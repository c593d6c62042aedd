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
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.losses import LOSSES
from engine.losses.base import DMLLoss
from engine.miners import Miner

REG_EPS = 1e-5


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
        weights, sims = self.assignment(embeddings)
        class_sims = (weights * sims).sum(dim=2)
        margin = self.margin_delta * F.one_hot(labels, self.num_classes).to(class_sims.dtype)
        loss = F.cross_entropy(self.lambda_ * (class_sims - margin), labels)
        if self.reg_weight > 0:
            loss = loss + self.reg_weight * self.regulariser(embeddings.dtype)
        return loss
