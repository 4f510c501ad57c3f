"""Activation patching and attribution patching on a Hugging Face decoder (Llama, Qwen2).

Two runs that differ in one input token — *clean* (the model does the behaviour) and *corrupted* (it does
the opposite) — and a metric of the last position's logits (a logit difference). **Activation patching**
copies one activation from one run into the other and reruns:

- *denoising* puts a clean activation into the corrupted run: how much of the behaviour does it restore?
  (is the component **sufficient**);
- *noising* puts a corrupted activation into the clean run: how much does it destroy? (is it **necessary**).
  Heimersheim & Nanda (2024) explain why the two can disagree (redundant "backup" components).

**Attribution patching** (Nanda 2023) estimates every patch at once from one forward and one backward pass:
metric(x + Δ) ≈ metric(x) + ∇metric(x) · Δ, with Δ the difference between the two runs' activations. It is
exact for a linear model and only a first-order guess where the model bends — which is what the experiment
measures.

Two exact shortcuts keep the sweeps cheap: a patch at layer `l` reruns only layers `l..L-1`
(`from_layer`, fed the stored residual stream), and only the last position's logits are computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .hf_hooks import decoder_parts, heads


def logit_diff(logits: torch.Tensor, good: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """logits (B, V) at the last position -> (B,): logit of the right answer minus the wrong one."""
    rows = torch.arange(len(logits))
    return logits[rows, good] - logits[rows, bad]


@contextlib.contextmanager
def from_layer(model, layer: int) -> Iterator[None]:
    """Within the block, `model.model` runs only blocks `layer..L-1`: feed it `inputs_embeds` = the residual
    stream entering block `layer`. (HF runs `self.layers[:num_hidden_layers]`; a shorter list is run whole.)"""
    decoder = model.model
    full = decoder.layers
    decoder.layers = torch.nn.ModuleList(list(full)[layer:])
    try:
        yield
    finally:
        decoder.layers = full


def last_logits_from(model, resid_pre: torch.Tensor, layer: int) -> torch.Tensor:
    """The last position's logits (B, V) when `resid_pre` (B, T, d) enters block `layer` (L: the final norm)."""
    _, layers, norm = decoder_parts(model)
    if layer == len(layers):
        return model.lm_head(norm(resid_pre[:, -1]))
    with from_layer(model, layer):
        hidden = model.model(inputs_embeds=resid_pre, use_cache=False).last_hidden_state     # (B, T, d), normed
    return model.lm_head(hidden[:, -1])


def attribution(grad: torch.Tensor, target: torch.Tensor, source: torch.Tensor, span: torch.Tensor | float,
                sum_dims: tuple[int, ...], prompt_dim: int) -> torch.Tensor:
    """Attribution patching's estimate of every patch of `source` into `target` at once, as a share of `span`:
    mean over prompts of ∇metric(target) · (source − target), summed over `sum_dims`.

    grad: per-prompt gradients of the metric at the target run (from `gradients`), shaped like target and
    source. Denoising: target = corrupted, source = clean, span = clean − corrupted metric (share restored).
    Noising: target = clean, source = corrupted, and the share destroyed is minus that estimate."""
    return (grad * (source - target)).sum(sum_dims).mean(prompt_dim) / span


@torch.no_grad()
def residual_streams(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(streams (L+1, B, T, d): the stream entering each block and, last, leaving the final block;
    last-position logits (B, V))."""
    _, layers, _ = decoder_parts(model)
    streams: list[torch.Tensor] = []
    handles = [layer.register_forward_pre_hook(
        lambda m, args, kwargs: streams.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
        for layer in layers]
    handles.append(layers[-1].register_forward_hook(
        lambda m, args, out: streams.append(out[0] if isinstance(out, tuple) else out)))
    try:
        hidden = model.model(input_ids=tokens, use_cache=False).last_hidden_state            # (B, T, d), normed
    finally:
        for h in handles:
            h.remove()
    return torch.stack(streams), model.lm_head(hidden[:, -1])


@torch.no_grad()
def patch_residual(model, target: torch.Tensor, source: torch.Tensor, layer: int, position: int) -> torch.Tensor:
    """Logits (B, V) of the target run with the stream entering `layer` at `position` taken from the source.

    target, source: (L+1, B, T, d) from `residual_streams`."""
    patched = target[layer].clone()                                                # (B, T, d)
    patched[:, position] = source[layer][:, position]
    return last_logits_from(model, patched, layer)


@torch.no_grad()
def patch_head(model, target: torch.Tensor, source_z: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """Logits (B, V) of the target run with head `head`'s output in `layer` (at every position) from the source.

    target (L+1, B, T, d) from `residual_streams`; source_z (B, T, H, h): the source run's `hook_z` there."""
    _, layers, _ = decoder_parts(model)
    n_heads = heads(model)[0]

    def swap(module, args):
        z = args[0].unflatten(-1, (n_heads, -1)).clone()                            # (B, T, H, h)
        z[:, :, head] = source_z[:, :, head]
        return (z.flatten(-2), *args[1:])

    handle = layers[layer].self_attn.o_proj.register_forward_pre_hook(swap)
    try:
        return last_logits_from(model, target[layer], layer)
    finally:
        handle.remove()


def head_outputs(model, tokens: torch.Tensor) -> torch.Tensor:
    """(L, B, T, H, h): every head's output before W_O (`hook_z`) in one forward pass."""
    _, layers, _ = decoder_parts(model)
    n_heads = heads(model)[0]
    z: list[torch.Tensor] = []
    handles = [layer.self_attn.o_proj.register_forward_pre_hook(
        lambda m, args: z.append(args[0].unflatten(-1, (n_heads, -1)).detach())) for layer in layers]
    try:
        with torch.no_grad():
            model.model(input_ids=tokens, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(z)


def gradients(model, tokens: torch.Tensor, good: torch.Tensor, bad: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward and backward pass of the logit difference of each prompt.

    Returns (d metric / d stream (L+1, B, T, d) — entering each block, then leaving the last;
             d metric / d z (L, B, T, H, h); the metric per prompt (B,))."""
    _, layers, _ = decoder_parts(model)
    n_heads = heads(model)[0]
    streams: list[torch.Tensor] = []
    zs: list[torch.Tensor] = []

    def keep_stream(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        x.retain_grad()
        streams.append(x)

    def keep_last(module, args, output):
        x = output[0] if isinstance(output, tuple) else output
        x.retain_grad()
        streams.append(x)

    def keep_z(module, args):
        z = args[0].unflatten(-1, (n_heads, -1))
        z.retain_grad()
        zs.append(z)
        return (z.flatten(-2), *args[1:])      # o_proj must read the tensor whose gradient we keep

    handles = [layer.register_forward_pre_hook(keep_stream, with_kwargs=True) for layer in layers]
    handles.append(layers[-1].register_forward_hook(keep_last))
    handles += [layer.self_attn.o_proj.register_forward_pre_hook(keep_z) for layer in layers]
    params = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.enable_grad():
            embeds = model.model.embed_tokens(tokens).detach().requires_grad_(True)
            hidden = model.model(inputs_embeds=embeds, use_cache=False).last_hidden_state
            metric = logit_diff(model.lm_head(hidden[:, -1]), good, bad)                 # (B,)
            metric.sum().backward()                # per-prompt gradients: each prompt reaches only its own metric
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(model.parameters(), params):
            p.requires_grad_(flag)
    return (torch.stack([s.grad for s in streams]), torch.stack([z.grad for z in zs]), metric.detach())
