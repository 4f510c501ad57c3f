"""Bijection elimination: recall a random permutation pair by pair, with an exact posterior at every step.

From "The Bayesian Geometry of Transformer Attention" (arXiv 2512.22471). Each sequence shows pairs
(k, π(k)) of a fresh uniform permutation π on V ids. Before v_t is shown, the Bayes-optimal prediction is
uniform over the V - t + 1 values not yet revealed: the model must *eliminate* what it has seen, so its
entropy should fall from log2 V to 1 bit along the sequence. Memorising is useless (π is new every time);
only in-context elimination reaches the Bayes entropy. The last pair is forced, so only L = V - 1 are shown.

Layout, one shared vocabulary of V ids:  [k1, v1, k2, v2, ..., kL, vL],  length 2L.
The model predicts v_t at the position of k_t, i.e. token index 2(t-1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BijectionTask:
    vocab: int = 10  # V: ids 0..V-1 serve as both keys and values

    def __post_init__(self) -> None:
        if self.vocab < 2:
            raise ValueError(f"vocab must be >= 2 (a permutation of one id reveals nothing); got vocab={self.vocab}."
                             f" Use vocab=2 or more.")

    @property
    def n_pairs(self) -> int:
        """L = V - 1: the V-th pair is determined by the others, so showing it teaches nothing."""
        return self.vocab - 1


@dataclass
class BijectionBatch:
    tokens: torch.Tensor  # (B, 2L) long: k1, v1, k2, v2, ...
    keys: torch.Tensor    # (B, L) long, distinct within a row
    values: torch.Tensor  # (B, L) long, values[:, i] = perm[keys[:, i]]
    perm: torch.Tensor    # (B, V) long, perm[k] = π(k)


def sample(task: BijectionTask, n: int, generator: torch.Generator) -> BijectionBatch:
    """n sequences, each with its own uniform permutation and its own uniform key order."""
    V, L = task.vocab, task.n_pairs
    # argsort of i.i.d. uniforms is a uniform permutation; float64 makes ties (which would bias it) negligible
    perm = torch.rand(n, V, generator=generator, dtype=torch.float64).argsort(dim=1)   # (B, V)
    order = torch.rand(n, V, generator=generator, dtype=torch.float64).argsort(dim=1)  # (B, V)
    keys = order[:, :L]                                                                # (B, L)
    values = perm.gather(1, keys)                                                      # (B, L)
    tokens = torch.stack([keys, values], dim=2).reshape(n, 2 * L)                      # (B, 2L)
    return BijectionBatch(tokens, keys, values, perm)


def posterior(batch: BijectionBatch) -> torch.Tensor:
    """P(v_t = j | k1, v1, ..., k_t), shape (B, L, V) float32: uniform over values not yet revealed.

    Keys never repeat, so k_t says nothing beyond "a fresh key": every unrevealed value is equally likely.
    """
    B, L = batch.values.shape
    V = batch.perm.shape[1]
    shown = torch.nn.functional.one_hot(batch.values, V).cumsum(dim=1)  # (B, L, V): v_1..v_t revealed
    before = torch.cat([torch.zeros_like(shown[:, :1]), shown[:, :-1]], dim=1)  # (B, L, V): v_1..v_{t-1}
    allowed = (before == 0).float()                                     # (B, L, V)
    return allowed / allowed.sum(dim=2, keepdim=True)                   # (B, L, V), each row 1/(V-t+1)


def bayes_entropy_bits(vocab: int) -> torch.Tensor:
    """Entropy of the exact posterior at t = 1..L: log2(V - t + 1), shape (L,) — the floor a model can reach."""
    remaining = torch.arange(vocab, 1, -1, dtype=torch.float64)  # (L,) V, V-1, ..., 2
    return torch.log2(remaining).float()


def prediction_positions(n_pairs: int) -> torch.Tensor:
    """Token indices where v_t is predicted (the k_t positions): 0, 2, ..., 2(L-1). Shape (L,)."""
    return torch.arange(0, 2 * n_pairs, 2)


def uniform_entropy_mae(vocab: int) -> float:
    """Entropy MAE of a predictor that ignores the context ("uniform over all V values"): the mean over t of
    log2 V − log2(V − t + 1). Any baseline that reads the context should beat it."""
    return float((math.log2(vocab) - bayes_entropy_bits(vocab).double()).mean())
