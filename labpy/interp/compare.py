"""Comparing two models' internals on the same input: representations by linear CKA, attention patterns by
total-variation distance.

Linear CKA (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural Network Representations Revisited",
eq. 5 with the linear kernel): for n examples, X (n, p) and Y (n, q) with every column centred,

    CKA(X, Y) = ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F · ‖Yᵀ Y‖_F)

It is HSIC(K, L) normalised, with K = XXᵀ and L = YYᵀ: 1 when the two representations are equal up to an
orthogonal transform and an isotropic scale, 0 when they are uncorrelated; it does not change under XQ
(Q orthogonal), aX (a ≠ 0) or adding a constant row vector. Unlike a correlation of coordinates it needs no
matching of neurons, so it compares a base model's residual stream with a fine-tuned one's even if directions
moved. It is *not* invariant to arbitrary invertible linear maps (that would make any two full-rank
representations of n ≤ p examples look identical).
"""

from __future__ import annotations

import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same n examples: x (n, p), y (n, q) -> a number in [0, 1].

    Computed in float64 from the feature-space form (p × q Gram products), cheap when n ≫ p."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs (n, p) and (n, q) with the same n, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    x = x.double() - x.double().mean(0, keepdim=True)                       # (n, p) centred columns
    y = y.double() - y.double().mean(0, keepdim=True)                       # (n, q)
    cross = (y.T @ x).pow(2).sum()                                          # ‖Yᵀ X‖²_F
    denom = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if denom == 0:
        raise ValueError("linear_cka of a constant representation is undefined (a centred matrix is zero)")
    return float(cross / denom)


def attention_tv(p: torch.Tensor, q: torch.Tensor, skip_first_query: bool = True) -> torch.Tensor:
    """Total-variation distance ½ Σ_k |p_k − q_k| between two models' attention rows, averaged over queries and
    the batch: (n_layers, B, H, T, T) twice -> (n_layers, H), each in [0, 1].

    Query 0 attends only to itself in every causal model, so its distance is always 0; it is left out unless
    `skip_first_query` is False."""
    if p.shape != q.shape:
        raise ValueError(f"attention_tv needs patterns of one shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    tv = 0.5 * (p.double() - q.double()).abs().sum(-1)                     # (L, B, H, T)
    if skip_first_query:
        tv = tv[..., 1:]
    return tv.mean(dim=(1, -1)).float()                                     # (L, H)
