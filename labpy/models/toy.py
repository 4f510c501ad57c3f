"""Toy transformers built natively by TransformerLens 4's `TransformerBridge` (no download, every hook named).

TL 4 removed `HookedTransformer`; `TransformerBridge.boot_native` builds a GPT-style model from a config with
the classic hook names (`blocks.0.attn.hook_pattern`, `blocks.1.hook_resid_post`, ...), so the capture and
ablation helpers in `labpy.interp` work on it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge


@dataclass(frozen=True)
class ToyTransformerConfig:
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_head: int = 16
    d_vocab: int = 50
    n_ctx: int = 64
    attn_only: bool = True
    d_mlp: int | None = None  # only when attn_only is False
    normalization: str | None = "LN"  # "LN", "RMS" or None
    d_vocab_out: int | None = None  # output classes when they differ from the input ids (a task head)


def build_toy_transformer(config: ToyTransformerConfig, seed: int) -> TransformerBridge:
    """A freshly initialised model; the same (config, seed) always gives the same weights."""
    mlp = {} if config.attn_only else {"d_mlp": config.d_mlp or 4 * config.d_model}
    bridge_config = TransformerBridgeConfig(
        n_layers=config.n_layers, d_model=config.d_model, n_heads=config.n_heads, d_head=config.d_head,
        d_vocab=config.d_vocab, n_ctx=config.n_ctx, attn_only=config.attn_only,
        act_fn=None if config.attn_only else "gelu", normalization_type=config.normalization,
        d_vocab_out=config.d_vocab_out or config.d_vocab, seed=seed, **mlp,
    )
    torch.manual_seed(seed)
    return TransformerBridge.boot_native(bridge_config)


def load_toy_transformer(config: ToyTransformerConfig | Mapping, state: Mapping[str, torch.Tensor]) -> TransformerBridge:
    """Rebuild a stored model: architecture from its config, weights from a checkpoint."""
    if not isinstance(config, ToyTransformerConfig):
        config = ToyTransformerConfig(**config)
    model = build_toy_transformer(config, seed=0)
    model.load_state_dict(dict(state))
    model.eval()
    return model
