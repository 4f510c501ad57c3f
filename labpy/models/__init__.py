"""Models the lab trains and inspects: toy transformers (TransformerLens 4 bridges), the wind-tunnel MLP, and
causal language models loaded through `load_lm` (the lab LM, local checkpoints, hub ids; 4/8-bit) with LoRA."""

# Every name is imported on first use: the toy model pulls in TransformerLens (~1.9 s with transformers), the LM
# helpers peft and bitsandbytes, and a page that reads only stored tables needs none of them.
_LAZY = {"ToyTransformerConfig": "toy", "build_toy_transformer": "toy", "load_toy_transformer": "toy",
         "load_lm": "lm", "add_lora": "lora", "trainable_parameters": "lora"}


def __getattr__(name: str):
    """`labpy.models.<name>` for the names in `_LAZY`, imported from its module on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
