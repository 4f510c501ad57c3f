"""Capture attention patterns and the residual stream in one forward pass, by TransformerLens hook name."""

from __future__ import annotations

import torch
from torch import nn


def is_pattern(name: str) -> bool:
    return name.endswith("attn.hook_pattern")


def is_residual(name: str) -> bool:
    return name == "blocks.0.hook_resid_pre" or name.endswith("hook_resid_post")


@torch.no_grad()
def capture(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run once; return logits (B, T, V), attention patterns (n_layers, B, n_heads, T, T) and the residual
    stream before each layer and after the last, (n_layers + 1, B, T, d_model)."""
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: is_pattern(n) or is_residual(n))
    n_layers = model.cfg.n_layers
    patterns = torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(n_layers)])
    residual = torch.stack([cache["blocks.0.hook_resid_pre"]]
                           + [cache[f"blocks.{layer}.hook_resid_post"] for layer in range(n_layers)])
    return logits, patterns, residual


@torch.no_grad()
def attention_patterns(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Attention patterns only: (n_layers, B, n_heads, T_query, T_key)."""
    return capture(model, tokens)[1]
