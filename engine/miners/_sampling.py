"""Vectorised sampling helpers shared by the triplet miners (torch RNG only)."""

from __future__ import annotations

import torch


def uniform_choice(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One column per row of a boolean (R, B) mask, uniformly among its True entries.

    Returns ``(index, has_choice)``; rows without any True entry get an arbitrary
    index and ``has_choice`` False, so callers drop or replace them.
    """
    if mask.shape[1] == 0:
        return torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device), mask.any(1)
    scores = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
    return scores.argmax(1), mask.any(1)


def positive_and_negative_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(same class and not self, other class) boolean (B, B) masks."""
    same = labels[:, None] == labels[None, :]
    positives = same.clone()
    positives.fill_diagonal_(False)
    return positives, ~same


def distinct_uniform(total: int, k: int, device: torch.device, dense_limit: int = 1 << 20) -> torch.Tensor:
    """``k`` distinct integers drawn uniformly from ``range(total)`` (a uniform k-subset, random order).

    Up to ``dense_limit`` (or when ``k`` is not small against ``total``) this is a
    random permutation's prefix. Above it, 2k draws with replacement are made and
    the first ``k`` distinct values in order of appearance kept: sequential drawing
    with rejection of repeats, which is sampling without replacement; with
    ``total >= 8 k²`` fewer than ``k`` distinct values is practically impossible,
    and the permutation is used if it happens anyway.
    """
    k = min(k, total)
    if total <= dense_limit or total < 8 * k * k:
        return torch.randperm(total, device=device)[:k]
    draws = torch.randint(total, (2 * k,), device=device)
    values, inverse = torch.unique(draws, return_inverse=True)
    if values.numel() < k:
        return torch.randperm(total, device=device)[:k]
    positions = torch.arange(2 * k, device=device)
    first = torch.full((values.numel(),), 2 * k, dtype=torch.long, device=device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return values[first.argsort()[:k]]
