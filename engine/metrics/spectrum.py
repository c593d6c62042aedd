"""ρ spectrum: how far the singular-value spectrum of the embeddings is from uniform."""

from __future__ import annotations

import torch


def singular_values(x: torch.Tensor) -> torch.Tensor:
    """All min(N, D) singular values (descending, float64) of the uncentred feature matrix."""
    return torch.linalg.svdvals(x.to(torch.float64))


def rho_spectrum(s: torch.Tensor, m: int) -> float | list[float] | None:
    """ρ of the singular values *s* (descending).

    For m ≠ 0 the |m| − 1 largest values are dropped; s̄ = s / Σs and u is uniform
    over the same length. m > 0: KL(u ‖ s̄); m < 0: KL(s̄ ‖ u); m = 0: s̄ as a list.
    None when nothing is left or Σs = 0. KL uses 0·log 0 = 0, and is +inf when
    u has mass where s̄ is exactly 0.
    """
    s = s.to(torch.float64)
    if m != 0:
        s = s[abs(m) - 1 :]
    total = float(s.sum()) if s.numel() else 0.0
    if s.numel() == 0 or total <= 0:
        return None
    p = s / total
    if m == 0:
        return [float(v) for v in p.cpu()]
    u = torch.full_like(p, 1.0 / p.numel())
    if m > 0:
        return float((u * (torch.log(u) - torch.log(p))).sum())
    return float(torch.special.xlogy(p, p / u).sum())
