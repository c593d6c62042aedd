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

from engine.losses import LOSSES
from engine.losses.base import DMLLoss
from engine.miners import Miner

SCALE = 3.0


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
        x = SCALE * F.normalize(embeddings, dim=1)
        p = SCALE * F.normalize(self.proxies.to(embeddings.dtype), dim=1)
        # ‖x̃ − p̃‖² = ‖x̃‖² + ‖p̃‖² − 2 x̃ᵀp̃ with both norms equal to SCALE (up to eps).
        dist = (x.pow(2).sum(1, keepdim=True) + p.pow(2).sum(1)[None, :] - 2.0 * x @ p.T).clamp_min(0.0)
        positive = F.one_hot(labels, self.num_classes).bool()
        d_pos = dist.gather(1, labels[:, None]).squeeze(1)
        log_denominator = torch.logsumexp((-dist).masked_fill(positive, float("-inf")), dim=1)
        return (d_pos + log_denominator).mean()
