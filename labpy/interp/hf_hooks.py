"""TransformerLens-style hook points on a Hugging Face decoder (Llama, Qwen2), with plain PyTorch hooks.

The lab LM (Qwen2, 4 query heads sharing 2 key/value heads), SmolLM2-135M (Llama, 9 sharing 3) and hub models
such as Qwen2.5-7B in 4 bits are all `transformers` models with the same module layout. This module gives
them TransformerLens' names and calls, so a page reads any of them — and the lab's toy TransformerLens
models — the same way:

    logits, cache = run_with_cache(model, tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    logits = run_with_hooks(model, tokens, fwd_hooks=[("blocks.3.attn.hook_z", zero_head(5))])

Hook points, per block `l` (shapes for batch B, positions T, width d, H query heads of size h, MLP width f):

    hook_embed                      (B, T, d)     token embeddings
    blocks.l.hook_resid_pre         (B, T, d)     residual stream entering the block
    blocks.l.attn.hook_pattern      (B, H, T, T)  attention per query head (eager attention only); read-only
    blocks.l.attn.hook_z            (B, T, H, h)  each head's output before W_O (ablate or patch heads here)
    blocks.l.hook_attn_out          (B, T, d)     what attention writes to the residual stream
    blocks.l.mlp.hook_pre           (B, T, f)     gate_proj(x), before act_fn: a gate is open where it is > 0
    blocks.l.mlp.hook_pre_linear    (B, T, f)     up_proj(x)
    blocks.l.mlp.hook_post          (B, T, f)     act_fn(pre) * pre_linear: what W_down reads (the neurons)
    blocks.l.hook_mlp_out           (B, T, d)     what the MLP writes to the residual stream
    blocks.l.hook_resid_post        (B, T, d)     residual stream leaving the block
    ln_final.hook_normalized        (B, T, d)     the final RMSNorm's output, what the unembedding reads

Why hooks on HF modules rather than TransformerLens' `TransformerBridge` for these models: the bridge needs a
`save_pretrained` folder and a tokenizer to boot from, adds dozens of hook points per block to every forward
pass, and its adapters must be checked per architecture (Qwen2's q/k/v biases were a known risk). Module hooks
observe the very computation `model(...)` performs, on 4-bit bitsandbytes layers too.
The names are TransformerLens 4's. `tests/test_hf_hooks.py` checks the values against a hand computation of
attention (RMSNorm, RoPE, grouped-query heads), exact invariants (the writes add up to the stream, W_O reads z,
an ablated head removes exactly its write), HF's own `output_hidden_states`/`output_attentions` (which HF
collects with hooks of its own, so they check names and indices more than arithmetic) and TransformerLens'
bridge (`TransformerBridge.boot_transformers(path, hf_model=copy)`: booting rewrites the modules of the model
it wraps, so it gets a copy), exact on Llama and on Qwen2 with q/k/v biases.

A hook function gets `(activation, hook)` like TransformerLens (`hook.name`, `hook.layer`) and returns a
replacement or None. Hooks run in the model's own dtype and device. As in TransformerLens, cached tensors may
be shared (`hook_embed` is `blocks.0.hook_resid_pre`): clone before editing one in place. With padded batches
pass `attention_mask`; padded positions still appear in the cache, so leave them out of any average.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

HookFn = Callable[[torch.Tensor, "HookInfo"], "torch.Tensor | None"]
NameFilter = Callable[[str], bool] | str | Sequence[str] | None

BLOCK_POINTS = ("hook_resid_pre", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "mlp.hook_pre",
                "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
READ_ONLY = ("attn.hook_pattern",)
_BLOCK_NAME = re.compile(r"blocks\.(\d+)\.(.+)")


@dataclass(frozen=True)
class HookInfo:
    """What a hook function learns about where it runs (TransformerLens passes a HookPoint with `.name`)."""

    name: str
    layer: int | None


def decoder_parts(model: Any) -> tuple[Any, Any, Any]:
    """(embedding, decoder layers, final norm) of a Llama/Qwen2-style HF causal LM; one clear error otherwise."""
    inner = getattr(model, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")):
        raise TypeError(f"{type(model).__name__} is not a Llama/Qwen2-style causal LM (model.model.embed_tokens, "
                        f".layers, .norm); labpy.interp.hf_hooks reads those")
    return inner.embed_tokens, inner.layers, inner.norm


def heads(model: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size)."""
    config = model.config
    n_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return n_heads, getattr(config, "num_key_value_heads", None) or n_heads, head_dim


def kv_head_of(model: Any) -> torch.Tensor:
    """(H,) the key/value head serving each query head: grouped-query attention shares one K/V head among
    H / KV consecutive query heads (HF's `repeat_kv` order)."""
    n_heads, n_kv, _ = heads(model)
    return torch.arange(n_heads) // (n_heads // n_kv)


def hook_names(model: Any) -> list[str]:
    n_layers = len(decoder_parts(model)[1])
    return (["hook_embed"] + [f"blocks.{layer}.{point}" for layer in range(n_layers) for point in BLOCK_POINTS]
            + ["ln_final.hook_normalized"])


def _as_filter(names_filter: NameFilter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if callable(names_filter):
        return names_filter
    wanted = set(names_filter)
    return lambda name: name in wanted


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output: Any, value: torch.Tensor) -> Any:
    return (value, *output[1:]) if isinstance(output, tuple) else value


def _split_heads(z: torch.Tensor, n_heads: int) -> torch.Tensor:
    return z.unflatten(-1, (n_heads, -1))                                          # (B, T, H*h) -> (B, T, H, h)


@contextlib.contextmanager
def hooks(model: Any, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]]) -> Iterator[None]:
    """Attach `fwd_hooks` [(name or name predicate, fn)] for the duration of the block."""
    embed, layers, norm = decoder_parts(model)
    n_heads = heads(model)[0]
    known = set(hook_names(model))
    resolved: dict[str, list[HookFn]] = {}
    for name, fn in fwd_hooks:
        matches = [n for n in known if name(n)] if callable(name) else [name]
        if not callable(name) and name not in known:
            raise KeyError(f"no hook point {name!r}; points look like 'blocks.0.attn.hook_z' "
                           f"(see labpy.interp.hf_hooks.hook_names(model))")
        for n in matches:
            resolved.setdefault(n, []).append(fn)

    def apply(name: str, value: torch.Tensor) -> torch.Tensor | None:
        layer = int(m.group(1)) if (m := _BLOCK_NAME.fullmatch(name)) else None
        changed = None
        for fn in resolved.get(name, []):
            out = fn(value if changed is None else changed, HookInfo(name, layer))
            if out is not None:
                if any(name.endswith(p) for p in READ_ONLY):
                    raise ValueError(f"{name} is read-only here (HF's attention kernels do not expose the "
                                     f"pattern for editing); patch blocks.N.attn.hook_z instead")
                changed = out
        return changed

    handles = []

    def output_hook(name: str, heads_split: bool = False):
        def hook(module, args, output):
            value = _first(output)
            if heads_split:
                value = _split_heads(value, n_heads)
            new = apply(name, value)
            if new is None:
                return None
            return _replace_first(output, new.flatten(-2) if heads_split else new)
        return hook

    def input_hook(name: str, heads_split: bool = False):
        def hook(module, args, kwargs):
            value = args[0] if args else kwargs["hidden_states"]
            shown = _split_heads(value, n_heads) if heads_split else value
            new = apply(name, shown)
            if new is None:
                return None
            new = new.flatten(-2) if heads_split else new
            return ((new, *args[1:]), kwargs) if args else (args, kwargs | {"hidden_states": new})
        return hook

    def pattern_hook(name: str):
        def hook(module, args, output):
            pattern = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if pattern is None:
                raise ValueError(f"{name}: the model computes attention with "
                                 f"{model.config._attn_implementation!r}, which returns no pattern; load it with "
                                 f"attn_implementation='eager' (labpy.models.lm.load_lm does by default)")
            apply(name, pattern)
        return hook

    def want(name: str) -> bool:
        return name in resolved

    try:
        if want("hook_embed"):
            handles.append(embed.register_forward_hook(output_hook("hook_embed")))
        for layer, block in enumerate(layers):
            p = f"blocks.{layer}."
            attn, mlp = block.self_attn, block.mlp
            if want(p + "hook_resid_pre"):
                handles.append(block.register_forward_pre_hook(input_hook(p + "hook_resid_pre"), with_kwargs=True))
            if want(p + "attn.hook_pattern"):
                handles.append(attn.register_forward_hook(pattern_hook(p + "attn.hook_pattern")))
            if want(p + "attn.hook_z"):
                handles.append(attn.o_proj.register_forward_pre_hook(input_hook(p + "attn.hook_z", True),
                                                                     with_kwargs=True))
            if want(p + "hook_attn_out"):
                handles.append(attn.register_forward_hook(output_hook(p + "hook_attn_out")))
            if want(p + "mlp.hook_pre"):
                handles.append(mlp.gate_proj.register_forward_hook(output_hook(p + "mlp.hook_pre")))
            if want(p + "mlp.hook_pre_linear"):
                handles.append(mlp.up_proj.register_forward_hook(output_hook(p + "mlp.hook_pre_linear")))
            if want(p + "mlp.hook_post"):
                handles.append(mlp.down_proj.register_forward_pre_hook(input_hook(p + "mlp.hook_post"),
                                                                       with_kwargs=True))
            if want(p + "hook_mlp_out"):
                handles.append(mlp.register_forward_hook(output_hook(p + "hook_mlp_out")))
            if want(p + "hook_resid_post"):
                handles.append(block.register_forward_hook(output_hook(p + "hook_resid_post")))
        if want("ln_final.hook_normalized"):
            handles.append(norm.register_forward_hook(output_hook("ln_final.hook_normalized")))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _forward(model: Any, tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    device = next(model.parameters()).device
    mask = attention_mask.to(device) if attention_mask is not None else None
    return model(input_ids=tokens.to(device), attention_mask=mask, use_cache=False).logits   # (B, T, V)


def run_with_hooks(model: Any, tokens: torch.Tensor, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]],
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, T, V) of one forward pass with `fwd_hooks` attached (ablate, patch, steer)."""
    with torch.no_grad(), hooks(model, fwd_hooks):
        return _forward(model, tokens, attention_mask)


def run_with_cache(model: Any, tokens: torch.Tensor, names_filter: NameFilter = None,
                   fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
                   attention_mask: torch.Tensor | None = None, device: str | torch.device = "cpu",
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, {hook name: activation}) for the points `names_filter` selects, detached and moved to `device`
    (CPU by default: a 7B model's cache would not fit beside it on a 16 GB card). `fwd_hooks` run first, so a
    cache can be taken of a patched run."""
    keep = _as_filter(names_filter)
    cache: dict[str, torch.Tensor] = {}

    def store(value: torch.Tensor, hook: HookInfo) -> None:
        cache[hook.name] = value.detach().to(device)

    wanted = [(name, store) for name in hook_names(model) if keep(name)]
    logits = run_with_hooks(model, tokens, [*fwd_hooks, *wanted], attention_mask)
    return logits, cache


def zero_head(*heads_to_zero: int) -> HookFn:
    """A `hook_z` function that removes the named heads' outputs (zero ablation)."""
    def hook(z: torch.Tensor, info: HookInfo) -> torch.Tensor:
        z = z.clone()
        z[..., list(heads_to_zero), :] = 0
        return z
    return hook
