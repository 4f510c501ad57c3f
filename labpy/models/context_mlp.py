"""A capacity-matched MLP baseline for the Bayesian wind tunnels: it sees the whole context, but cannot attend.

How the MLP sees the context (the paper leaves this open; this is our choice): every prediction gets its own
input row — the tokens of the prefix up to the prediction point, right-padded with a PAD id to a fixed width,
embedded (one learned vector per token id) and *flattened*, so position is the slot a token sits in. The
information is all there; what the MLP lacks is attention's content-addressed lookup, which is the paper's point.
Residual blocks with LayerNorm follow the paper's description of its baseline (deep, residual, LayerNorm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ContextMLPConfig:
    n_tokens: int         # input ids, PAD excluded (PAD is id n_tokens)
    context: int          # slots in the flattened input
    n_out: int            # output classes
    d_embed: int = 16
    width: int = 256
    depth: int = 4        # residual blocks

    def n_params(self) -> int:
        emb = (self.n_tokens + 1) * self.d_embed
        stem = self.context * self.d_embed * self.width + self.width
        block = 2 * self.width + self.width * self.width + self.width   # LayerNorm, Linear
        head = 2 * self.width + self.width * self.n_out + self.n_out
        return emb + stem + self.depth * block + head


class ContextMLP(nn.Module):
    def __init__(self, config: ContextMLPConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.n_tokens + 1, config.d_embed)
        self.stem = nn.Linear(config.context * config.d_embed, config.width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, config.width), nn.GELU())
            for _ in range(config.depth))
        self.head = nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, config.n_out))

    @property
    def pad_id(self) -> int:
        return self.config.n_tokens

    def forward(self, contexts: torch.Tensor) -> torch.Tensor:
        """contexts (N, C) long, PAD-filled on the right -> logits (N, n_out)."""
        N, C = contexts.shape
        if C != self.config.context:
            raise ValueError(f"context width {C} != the MLP's {self.config.context}; pad prefixes with "
                             f"padded_prefixes(tokens, positions, {self.config.context}, pad_id)")
        h = self.stem(self.embed(contexts).reshape(N, C * self.config.d_embed))   # (N, width)
        for block in self.blocks:
            h = h + block(h)                                                      # (N, width)
        return self.head(h)                                                       # (N, n_out)


def padded_prefixes(tokens: torch.Tensor, positions: torch.Tensor, context: int, pad_id: int) -> torch.Tensor:
    """One row per (sequence, prediction position): tokens[: p + 1], right-padded to `context`.

    tokens (B, T) long, positions (P,) -> (B, P, context) long. The row for position p holds exactly what a
    causal transformer predicting at p may see.
    """
    B, T = tokens.shape
    width = max(context, T)
    padded = torch.full((B, width), pad_id, dtype=tokens.dtype)
    padded[:, :T] = tokens
    slots = torch.arange(context)                                                # (C,)
    visible = slots[None, :] <= positions[:, None]                               # (P, C)
    rows = padded[:, None, :context].expand(B, len(positions), context)          # (B, P, C)
    return torch.where(visible[None], rows, torch.full_like(rows, pad_id))


def matched_config(target_params: int, n_tokens: int, context: int, n_out: int, d_embed: int = 16,
                   depth: int = 4, tolerance: float = 0.01) -> ContextMLPConfig:
    """The width (and, if needed to land within `tolerance`, a nearby embedding size) whose parameter count is
    closest to `target_params`; an error if none is within `tolerance`. Wide flattened inputs make each width
    step cost context·d_embed parameters, so the embedding size is the fine adjustment."""
    embeds = sorted(range(max(2, d_embed // 2), 2 * d_embed + 1), key=lambda e: abs(e - d_embed))
    best = None
    for e in embeds:  # the requested embedding size first; others only when it cannot match
        candidate = min((ContextMLPConfig(n_tokens, context, n_out, e, w, depth) for w in range(8, 4097)),
                        key=lambda c: abs(c.n_params() - target_params))
        if best is None or abs(candidate.n_params() - target_params) < abs(best.n_params() - target_params):
            best = candidate
        if abs(best.n_params() - target_params) / target_params <= tolerance / 4:
            break
    gap = abs(best.n_params() - target_params) / target_params
    if gap > tolerance:
        raise ValueError(f"no width gives an MLP within {tolerance:.0%} of {target_params} parameters "
                         f"(best: width {best.width}, {best.n_params()}, off by {gap:.2%}); change depth={depth} "
                         f"or d_embed={d_embed}")
    return best
