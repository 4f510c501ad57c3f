"""Models the lab trains and inspects: toy transformers (TransformerLens 4 bridges)."""

from .toy import ToyTransformerConfig, build_toy_transformer, load_toy_transformer

__all__ = ["ToyTransformerConfig", "build_toy_transformer", "load_toy_transformer"]
