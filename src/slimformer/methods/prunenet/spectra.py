"""Pieces both PruneNet trainings use (:mod:`.policy`, the library's; :mod:`.reference`, the
official code's): the Kolmogorov-Smirnov distance of two spectra, singular values, and an ordered
draw without replacement. Kept apart so the two trainings do not import each other."""

from __future__ import annotations

import torch


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic ``sup_x |F_a(x) - F_b(x)|`` of two 1-D samples."""
    a, b = a.detach().double().flatten().sort().values, b.detach().double().flatten().sort().values
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("ks_distance needs two non-empty samples")
    xs = torch.cat([a, b])
    fa = torch.searchsorted(a, xs, right=True).double() / a.numel()
    fb = torch.searchsorted(b, xs, right=True).double() / b.numel()
    return float((fa - fb).abs().max())


def singular_values(W: torch.Tensor) -> torch.Tensor:
    """``sigma(W)`` in float32 (descending)."""
    return torch.linalg.svdvals(W.detach().float())


def gumbel_top_k(logits: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """An ordered draw of ``k`` of ``len(logits)`` items without replacement (Plackett-Luce)."""
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    perturbed = logits.detach().double().cpu() - torch.log(-torch.log(u))
    return perturbed.argsort(descending=True)[:k]


__all__ = ["gumbel_top_k", "ks_distance", "singular_values"]
