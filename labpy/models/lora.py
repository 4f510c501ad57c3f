"""LoRA adapters through peft, on full-precision or bitsandbytes-quantized bases.

LoRA replaces the update of a weight W (d_out × d_in) by a low-rank product B·A (B: d_out × r, A: r × d_in),
scaled by alpha / r; W stays frozen. Trainable parameters per adapted matrix: r·(d_in + d_out).

The 4-bit eval-then-train trap (bitsandbytes 0.50 on a CPU with AVX512-BF16): a forward pass in eval mode
with no gradient repacks each `Linear4bit` weight in place into a CPU inference layout, after which a training
backward fails ("a view of a leaf Variable that requires grad is being used in an in-place operation").
`add_lora` unpacks any already-packed weights and switches that repacking off on the adapted model, so
evaluating held-out loss between training steps is safe. Still: load a fresh model for training.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def is_quantized(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
                or getattr(model, "is_quantized", False))


def keep_4bit_training_layout(model: torch.nn.Module) -> int:
    """Undo and forbid bitsandbytes' CPU inference repacking of 4-bit weights; returns the layers touched."""
    import bitsandbytes as bnb

    try:
        from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse as unpack
    except ImportError:  # other bitsandbytes versions do not repack
        unpack = None
    touched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = getattr(module.weight, "quant_state", None)
            if unpack is not None and state is not None and getattr(state, "packing_format_for_cpu", False):
                module.weight.data, module.weight.quant_state = unpack(module.weight.data, state)
            module.support_avx512bf16_for_cpu = False
            touched += 1
    return touched


def add_lora(model: torch.nn.Module, rank: int, alpha: float | None = None,
             targets: Sequence[str] = DEFAULT_TARGETS, dropout: float = 0.0,
             gradient_checkpointing: bool = False):
    """Wrap `model` in a peft `PeftModel` with rank-`rank` adapters on the `targets` linear layers.

    `alpha` defaults to `rank` (scale alpha/r = 1 at every rank, so rank sweeps compare like with like).
    Quantized bases go through `prepare_model_for_kbit_training` (norms and embeddings to fp32, input grads
    on); gradient checkpointing is off unless asked for, since peft would otherwise switch it on silently.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear) or "Linear" in type(m).__name__})
        raise ValueError(f"LoRA targets {missing} are not modules of this model; linear layers: {', '.join(linear)}")
    config = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank), lora_dropout=dropout,
                        target_modules=list(targets), bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():   # peft reads `is_gradient_checkpointing`, deprecated in transformers 5
        warnings.simplefilter("ignore", FutureWarning)
        if is_quantized(model):
            keep_4bit_training_layout(model)
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        elif gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        return get_peft_model(model, config)


def trainable_parameters(model: torch.nn.Module) -> int:
    """Number of parameters that will be trained (requires_grad), e.g. only the LoRA adapters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_parameter_count(model: torch.nn.Module, rank: int, targets: Sequence[str] = DEFAULT_TARGETS) -> int:
    """The count LoRA should give, from the base model's shapes: r·(d_in + d_out) per adapted linear layer."""
    total = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets and hasattr(module, "in_features"):
            total += rank * (module.in_features + module.out_features)
    return total
