"""Entropy and KL in bits, with 0·log 0 = 0 — the yardsticks for comparing a model to an exact posterior.

Exact posteriors have exact zeros (revealed values, impossible states); a naive p·log p turns them into NaN.
`torch.special.xlogy` defines x·log y = 0 at x = 0, which is the convention both quantities need.
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def entropy_bits(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """H(p) = -Σ p log2 p along `dim`; zero-probability entries contribute nothing."""
    return -torch.special.xlogy(p, p).sum(dim) / LN2


def kl_bits(p: torch.Tensor, q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """KL(p‖q) = Σ p log2(p/q) along `dim`: 0 where p = 0, +inf where p > 0 = q (q cannot explain p)."""
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(dim) / LN2
