"""The lab's toy transformer: one file to read top to bottom (nanoGPT's `model.py` is the model), with a
TransformerLens `HookPoint` at every activation.

Why our own: TransformerLens 4's `TransformerBridge`, built natively, routes every operation through generic
wrapper modules and costs up to twice a plain PyTorch step (experiments/benchmarks.qmd), which every toy
experiment pays. This file computes the same function with the bridge's parameter names
(`blocks.0.attn.q.weight`, ...) and its classic hook names and shapes (`blocks.0.attn.hook_pattern`,
`blocks.1.hook_resid_post`, ...), so stored checkpoints load unchanged and `run_with_cache`, `run_with_hooks`
and `labpy.interp` work as before. Differences from the bridge: `hook_attn_scores` holds the masked scores
before the softmax (the bridge's holds the pattern); the norms have no `hook_in`, and with `normalization=None`
no hooks at all; there are no `W_in`/`W_out` views of the MLP. `build_bridge_transformer` keeps the bridge as
the independent reference the tests compare against (tests/test_toy_transformer.py).

Shapes: B batch, T positions, d d_model, H heads, h d_head, m d_mlp, V vocabulary (V_out: output classes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

NORMALIZATIONS = ("LN", "RMS", None)


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

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={self.normalization!r} is not one of {NORMALIZATIONS}; pick one of them")

    @property
    def mlp_width(self) -> int:
        return self.d_mlp or 4 * self.d_model

    @property
    def n_outputs(self) -> int:
        return self.d_vocab_out or self.d_vocab


class Norm(nn.Module):
    """LayerNorm ("LN": centre, then divide by the RMS) or RMSNorm ("RMS": divide only), then a learned gain
    (and for LN a bias). Hooks as the bridge has them: `hook_scale` (B, T, 1) the divisor, `hook_normalized`
    (B, T, d) before the gain, `hook_out` (B, T, d) what the next layer reads."""

    def __init__(self, d_model: int, kind: str, eps: float = 1e-5):
        super().__init__()
        self.centre, self.eps = kind == "LN", eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if self.centre else None
        self.hook_scale, self.hook_normalized, self.hook_out = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:                     # (B, T, d) -> (B, T, d)
        if not listened(self.hook_scale, self.hook_normalized):   # the same function in one fused kernel
            fused = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps) if self.centre else \
                F.rms_norm(x, x.shape[-1:], self.weight, self.eps)
            return self.hook_out(fused)
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())    # (B, T, 1)
        x = self.hook_normalized(x / scale) * self.weight
        return self.hook_out(x + self.bias if self.centre else x)


def listened(*points: HookPoint) -> bool:
    """Whether any hook could see these points: one of their own (forward, backward, either kind of pre-hook, as
    `run_with_cache`, `run_with_hooks` and TL's `add_hook` register them) or a global module hook. When none
    could, the model may compute what they would see in a fused kernel that never materialises it."""
    if (torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
            or torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks):
        return True
    return any(p._forward_hooks or p._forward_pre_hooks or p._backward_hooks or p._backward_pre_hooks for p in points)


def make_norm(config: ToyTransformerConfig) -> nn.Module:
    return nn.Identity() if config.normalization is None else Norm(config.d_model, config.normalization)


class Attention(nn.Module):
    """Causal multi-head attention, written out so every intermediate is a hook: queries, keys, values and each
    head's output z (B, T, H, h), scores and pattern (B, H, T_query, T_key)."""

    def __init__(self, config: ToyTransformerConfig):
        super().__init__()
        self.n_heads, self.d_head = config.n_heads, config.d_head
        inner = config.n_heads * config.d_head
        self.q, self.k, self.v = (nn.Linear(config.d_model, inner) for _ in range(3))
        self.o = nn.Linear(inner, config.d_model)
        self.register_buffer("future", torch.ones(config.n_ctx, config.n_ctx, dtype=torch.bool).triu(1),
                             persistent=False)                                              # (n_ctx, n_ctx)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:                     # (B, T, d) -> (B, T, d)
        B, T, _ = x.shape
        heads = (B, T, self.n_heads, self.d_head)
        q = self.hook_q(self.q(x).view(heads)).transpose(1, 2)              # (B, H, T, h)
        k = self.hook_k(self.k(x).view(heads)).transpose(1, 2)
        v = self.hook_v(self.v(x).view(heads)).transpose(1, 2)
        if listened(self.hook_attn_scores, self.hook_pattern):
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.d_head)     # (B, H, T, T)
            scores = self.hook_attn_scores(scores.masked_fill(self.future[:T, :T], float("-inf")))
            pattern = self.hook_pattern(scores.softmax(-1))                  # (B, H, T, T), rows sum to 1
            mixed = pattern @ v                                              # (B, H, T, h)
        else:   # nobody reads or edits the pattern: the same function, fused, without storing (B, H, T, T)
            mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        z = self.hook_z(mixed.transpose(1, 2))                               # (B, T, H, h)
        return self.o(z.reshape(B, T, -1))


class MLP(nn.Module):
    """d -> m -> d with GELU (exact, as TransformerLens' "gelu"). The input layer is called `in` (a Python
    keyword) to keep the bridge's parameter names, so it is registered and read by name."""

    def __init__(self, config: ToyTransformerConfig):
        super().__init__()
        self.add_module("in", nn.Linear(config.d_model, config.mlp_width))
        self.out = nn.Linear(config.mlp_width, config.d_model)
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:                     # (B, T, d) -> (B, T, d)
        pre = self.hook_pre(self._modules["in"](x))                          # (B, T, m)
        return self.out(self.hook_post(F.gelu(pre)))


class Block(nn.Module):
    """Pre-norm residual block: resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid +
    mlp(ln2(resid_mid)) (attention-only models stop at resid_mid, which is then resid_post)."""

    def __init__(self, config: ToyTransformerConfig):
        super().__init__()
        self.attn_only = config.attn_only
        self.ln1, self.attn = make_norm(config), Attention(config)
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        if not config.attn_only:
            self.ln2, self.mlp = make_norm(config), MLP(config)
            self.hook_resid_mid, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(self, resid: torch.Tensor) -> torch.Tensor:                 # (B, T, d) -> (B, T, d)
        resid = self.hook_resid_pre(resid)
        resid = resid + self.hook_attn_out(self.attn(self.ln1(resid)))
        if self.attn_only:
            return self.hook_resid_post(resid)
        resid = self.hook_resid_mid(resid)
        return self.hook_resid_post(resid + self.hook_mlp_out(self.mlp(self.ln2(resid))))


class Unembed(nn.Module):
    """(B, T, d) -> (B, T, V_out) logits. Its bias is a buffer fixed at zero, not a parameter: so it was in the
    TL bridge every stored model trained on, and the checkpoints hold it."""

    def __init__(self, d_model: int, n_outputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_outputs, d_model))
        self.register_buffer("bias", torch.zeros(n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class ToyTransformer(HookedRootModule):
    """Token and position embeddings, `n_layers` blocks, a final norm and an unembedding."""

    def __init__(self, config: ToyTransformerConfig):
        super().__init__()
        self.cfg = config
        self.embed = nn.Embedding(config.d_vocab, config.d_model)
        self.pos_embed = nn.Embedding(config.n_ctx, config.d_model)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_final = make_norm(config)
        self.unembed = Unembed(config.d_model, config.n_outputs)
        self.hook_unembed = HookPoint()
        self.setup()   # TransformerLens: name every HookPoint by its module path

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:                # (B, T) ids -> (B, T, V_out) logits
        B, T = tokens.shape
        positions = self.pos_embed(torch.arange(T, device=tokens.device)).expand(B, T, -1).contiguous()   # (B, T, d)
        resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(positions)
        for block in self.blocks:
            resid = block(resid)
        return self.hook_unembed(self.unembed(self.ln_final(resid)))

    # TransformerLens' weight views, stacked over layers, for circuit analysis (read-only views of the Linears)
    @property
    def W_E(self) -> torch.Tensor:                                          # (V, d)
        return self.embed.weight

    @property
    def W_pos(self) -> torch.Tensor:                                        # (n_ctx, d)
        return self.pos_embed.weight

    @property
    def W_U(self) -> torch.Tensor:                                          # (d, V_out)
        return self.unembed.weight.T

    def _reading(self, name: str) -> torch.Tensor:                          # (L, H, d, h): x @ W[l, head]
        return torch.stack([getattr(b.attn, name).weight.view(self.cfg.n_heads, self.cfg.d_head, -1).transpose(1, 2)
                            for b in self.blocks])

    def _reading_bias(self, name: str) -> torch.Tensor:                     # (L, H, h)
        return torch.stack([getattr(b.attn, name).bias.view(self.cfg.n_heads, self.cfg.d_head) for b in self.blocks])

    W_Q = property(lambda self: self._reading("q"))
    W_K = property(lambda self: self._reading("k"))
    W_V = property(lambda self: self._reading("v"))
    b_Q = property(lambda self: self._reading_bias("q"))
    b_K = property(lambda self: self._reading_bias("k"))
    b_V = property(lambda self: self._reading_bias("v"))

    @property
    def W_O(self) -> torch.Tensor:                                          # (L, H, h, d): z[head] @ W_O[l, head]
        return torch.stack([b.attn.o.weight.view(self.cfg.d_model, self.cfg.n_heads, self.cfg.d_head).permute(1, 2, 0)
                            for b in self.blocks])

    @property
    def b_O(self) -> torch.Tensor:                                          # (L, d)
        return torch.stack([b.attn.o.bias for b in self.blocks])


def init_weights(model: ToyTransformer, seed: int) -> None:
    """GPT-2's initialisation as TransformerLens applies it: weights N(0, σ) with σ = 0.8/√d_model, the
    matrices that write to the residual stream (attention `o`, MLP `out`) at σ/√(2·n_layers), biases 0, norm
    gains 1. Drawn from a generator of its own, so building a model leaves the global RNG alone."""
    generator = torch.Generator().manual_seed(seed)
    std = 0.8 / math.sqrt(model.cfg.d_model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif isinstance(model.get_submodule(name.rsplit(".", 1)[0]), Norm):
                param.fill_(1.0)
            else:
                writes = name.endswith(("attn.o.weight", "mlp.out.weight"))
                sample = torch.randn(param.shape, generator=generator)
                param.copy_(sample * (std / math.sqrt(2 * model.cfg.n_layers) if writes else std))


def _construct(config: ToyTransformerConfig) -> ToyTransformer:
    """The modules, their PyTorch default initialisation drawn and discarded without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        return ToyTransformer(config)


def build_toy_transformer(config: ToyTransformerConfig, seed: int) -> ToyTransformer:
    """A freshly initialised model; the same (config, seed) always gives the same weights."""
    model = _construct(config)
    init_weights(model, seed)
    return model


def load_toy_transformer(config: ToyTransformerConfig | Mapping, state: Mapping[str, torch.Tensor]) -> ToyTransformer:
    """Rebuild a stored model (trained on this model or on the TL bridge: same names, same function)."""
    if not isinstance(config, ToyTransformerConfig):
        config = ToyTransformerConfig(**config)
    model = _construct(config)
    model.load_state_dict(dict(state))
    model.eval()
    return model


def build_bridge_transformer(config: ToyTransformerConfig, seed: int):
    """The same architecture as TransformerLens 4's natively built `TransformerBridge`: the lab's toy model
    before this file, kept as the reference the tests and the benchmark compare against."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    mlp = {} if config.attn_only else {"d_mlp": config.mlp_width}
    bridge_config = TransformerBridgeConfig(
        n_layers=config.n_layers, d_model=config.d_model, n_heads=config.n_heads, d_head=config.d_head,
        d_vocab=config.d_vocab, n_ctx=config.n_ctx, attn_only=config.attn_only,
        act_fn=None if config.attn_only else "gelu", normalization_type=config.normalization,
        d_vocab_out=config.n_outputs, seed=seed, **mlp,
    )
    with torch.random.fork_rng(devices=[]):   # the bridge draws its weights from the global RNG: seed it, then restore
        torch.manual_seed(seed)
        return TransformerBridge.boot_native(bridge_config)


def load_bridge_transformer(config: ToyTransformerConfig, state: Mapping[str, torch.Tensor]):
    """A stored model read through the TL bridge, in eval mode: the reference `load_toy_transformer` is checked against."""
    model = build_bridge_transformer(config, seed=0)
    model.load_state_dict(dict(state))
    model.eval()
    return model
