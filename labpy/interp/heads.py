"""Head scores (previous-token, induction) and head ablation.

Scores follow Olsson et al. / ARENA: the mean attention weight a head puts on the position a mechanism would
use. On `[r_1..r_L, r_1..r_L]`, an induction head at a second-copy position i attends to i - L + 1 (the token
after the earlier occurrence of the current token); a previous-token head attends to i - 1.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from .capture import attention_patterns


def previous_token_scores(patterns: torch.Tensor) -> torch.Tensor:
    """(n_layers, B, H, T, T) -> (n_layers, H): mean attention from position t to t-1, over t >= 1."""
    return patterns.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(1, -1))


def induction_scores(patterns: torch.Tensor, half: int) -> torch.Tensor:
    """(n_layers, B, H, 2L, 2L) on repeated random tokens with L = `half` -> (n_layers, H).

    Mean over second-copy queries i in [L, 2L) of the attention to key i - L + 1.
    """
    return patterns.diagonal(offset=-(half - 1), dim1=-2, dim2=-1)[..., 1:].mean(dim=(1, -1))


def duplicate_token_scores(patterns: torch.Tensor, half: int) -> torch.Tensor:
    """(n_layers, B, H, 2L, 2L) on repeated random tokens -> (n_layers, H): mean attention from second-copy
    query i to key i - L, the earlier occurrence of the same token."""
    return patterns.diagonal(offset=-half, dim1=-2, dim2=-1).mean(dim=(1, -1))


def first_token_scores(patterns: torch.Tensor) -> torch.Tensor:
    """(n_layers, B, H, T, T) -> (n_layers, H): mean attention on position 0 from queries t >= 1 — the
    "attention sink" a head parks its weight on when nothing else is worth reading."""
    return patterns[..., 1:, 0].mean(dim=(1, -1))


def local_window_scores(patterns: torch.Tensor, width: int = 4) -> torch.Tensor:
    """(n_layers, B, H, T, T) -> (n_layers, H): mean attention mass on the `width` most recent keys (t-width+1
    .. t), over queries t >= width - 1 (earlier queries have fewer keys, which would inflate the score)."""
    T = patterns.shape[-1]
    mass = sum(patterns.diagonal(offset=-k, dim1=-2, dim2=-1)[..., width - 1 - k:] for k in range(width))
    return mass.mean(dim=(1, -1)) if T >= width else torch.full(patterns.shape[:1] + patterns.shape[2:3], float("nan"))


def entropy_bits(patterns: torch.Tensor) -> torch.Tensor:
    """(n_layers, B, H, T, T) -> (n_layers, H): mean entropy of each query's attention, in bits, over queries
    t >= 1 (query 0 has one key). log2(t + 1) is the uniform maximum at query t."""
    p = patterns[..., 1:, :]
    return -(p * torch.log2(p.clamp_min(1e-12))).sum(-1).mean(dim=(1, -1))


def head_scores_table(model: nn.Module, tokens: torch.Tensor, half: int) -> pd.DataFrame:
    """One row per head: layer, head, previous-token score, induction score."""
    patterns = attention_patterns(model, tokens)
    prev, ind = previous_token_scores(patterns), induction_scores(patterns, half)
    rows = [
        {"layer": layer, "head": head, "label": f"L{layer}H{head}",
         "previous_token": prev[layer, head].item(), "induction": ind[layer, head].item()}
        for layer in range(prev.shape[0]) for head in range(prev.shape[1])
    ]
    return pd.DataFrame(rows)


def zero_heads_hook(heads: list[int]):
    """A forward hook for `blocks.{layer}.attn.hook_z` (B, T, H, d_head) that zeroes the outputs of `heads`."""

    def hook(z: torch.Tensor, hook=None) -> torch.Tensor:
        z = z.clone()
        z[:, :, heads] = 0.0
        return z

    return hook


def ablate_head_hook(head: int):
    """A forward hook for `blocks.{layer}.attn.hook_z` that zeroes one head's output (B, T, H, d_head)."""
    return zero_heads_hook([head])


def capture_hook(store: dict, key):
    """A forward hook that keeps a detached copy of the activation in `store[key]` and passes it on unchanged."""

    def hook(x: torch.Tensor, hook=None) -> torch.Tensor:
        store[key] = x.detach()
        return x

    return hook


@torch.no_grad()
def patterns_with_head_ablated(model: nn.Module, tokens: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """Attention patterns (n_layers, B, H, T, T) when head (layer, head) writes nothing to the residual stream."""
    n_layers = model.cfg.n_layers
    captured: dict[int, torch.Tensor] = {}
    keep = lambda layer_index: capture_hook(captured, layer_index)

    hooks = [(f"blocks.{layer}.attn.hook_z", ablate_head_hook(head))]
    hooks += [(f"blocks.{i}.attn.hook_pattern", keep(i)) for i in range(n_layers)]
    model.run_with_hooks(tokens, fwd_hooks=hooks)
    return torch.stack([captured[i] for i in range(n_layers)])
