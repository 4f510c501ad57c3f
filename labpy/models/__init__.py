"""Models the lab trains and inspects: toy transformers (TransformerLens 4 bridges), the wind-tunnel MLP, and
causal language models loaded through `load_lm` (the lab LM, local checkpoints, hub ids; 4/8-bit) with LoRA."""

from .toy import ToyTransformerConfig, build_toy_transformer, load_toy_transformer

_LAZY = {"load_lm": "lm", "add_lora": "lora", "trainable_parameters": "lora"}


def __getattr__(name: str):
    """`labpy.models.load_lm` and the LoRA helpers, imported on first use (they pull in peft and bitsandbytes)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ToyTransformerConfig", "build_toy_transformer", "load_toy_transformer", *_LAZY]
