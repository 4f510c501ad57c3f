"""μP (Yang et al. 2022, "Tensor Programs V") for the lab LM, relative to a base width.

Why: under the standard parametrisation (SP) Adam moves every weight by about the rate per step, so a hidden
layer's output moves by about rate × fan-in and the best rate falls as one over the width (measured on the
learning-rate page). μP rescales what grows with the width so that a rate tuned at one width holds at another.
With the width multiplier m = width / base_width, and Adam, μP changes four things (the `mup` package's
"Table 8" form, which suits a tied embedding):

- hidden matrices (attention q/k/v/o, MLP gate/up/down): rate × 1/m, initial std × 1/√m (∝ 1/√fan-in);
- attention logits: scaled by 1/head_dim rather than 1/√head_dim, matched at the base width;
- output logits: × 1/m (the readout's fan-in is the width);
- the embedding (tied: also the readout), the norms and the biases keep their rate and initialisation.

At the base width (m = 1) every change is the identity, so the μP model *is* the standard one there.
`apply_mup` changes a built model in place (`parts` picks which of its three changes, to take μP apart);
`mup_lr_scales` gives the rates for `TrainSpec.lr_scales`.
"""

from __future__ import annotations

import math
import re

import torch

# The hidden matrices: every projection inside a block (their fan-in, or fan-out, grows with the width).
HIDDEN_WEIGHTS = r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$"
MODEL_PARTS = ("init", "attention", "output")    # what `apply_mup` changes; the fourth, "rates", is the TrainSpec's


def width_multiplier(width: int, base_width: int) -> float:
    """m = width / base_width, checked: both must be positive integers."""
    for name, value in (("width", width), ("base_width", base_width)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} = {value!r} must be a positive integer (the model's hidden size)")
    return width / base_width


def mup_lr_scales(width: int, base_width: int) -> tuple[tuple[str, float], ...]:
    """`TrainSpec.lr_scales` for μP with Adam: the hidden matrices' rate × base_width / width, the rest unchanged."""
    return ((HIDDEN_WEIGHTS, 1 / width_multiplier(width, base_width)),)


def apply_mup(model: torch.nn.Module, base_width: int, parts: tuple[str, ...] = MODEL_PARTS) -> torch.nn.Module:
    """Re-parametrise a freshly built HF Qwen2/Llama causal LM to μP relative to `base_width`, in place.

    `parts` (a subset of `MODEL_PARTS`) picks the changes made: "init" the hidden weights' size, "attention" the
    logits' 1/head_dim scale, "output" the output multiplier; the rest stay standard.

    Rescaling the HF initialisation (std `initializer_range`) by 1/√m keeps the random draws, so the μP and the
    standard model of a seed share their initial directions; at m = 1 nothing changes. The output multiplier is
    a forward hook on `lm_head` and the attention scale an attribute of each attention module: neither is in the
    state dict, so a saved μP model must be rebuilt with `apply_mup` before its weights are loaded.
    """
    unknown = sorted(set(parts) - set(MODEL_PARTS))
    if unknown:
        raise ValueError(f"apply_mup parts {unknown} are not μP changes of the model; choose from {list(MODEL_PARTS)}")
    config = model.config
    m = width_multiplier(config.hidden_size, base_width)
    if m == 1:
        return model
    head_dim = config.hidden_size // config.num_attention_heads
    base_head_dim = base_width // config.num_attention_heads
    if "init" in parts:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if _is_hidden(name):
                    p.mul_(1 / math.sqrt(m))
    if "attention" in parts:
        for layer in model.model.layers:
            layer.self_attn.scaling = math.sqrt(base_head_dim) / head_dim     # 1/√base_hd at the base, ∝ 1/head_dim
    if "output" in parts:
        model.lm_head.register_forward_hook(lambda module, inputs, logits: logits / m)   # logits (B, T, V) × 1/m
    return model


def _is_hidden(name: str) -> bool:
    return re.search(HIDDEN_WEIGHTS, name) is not None
