"""What the memory-model pages compute: the largest batch that fits the extrapolated 7B recipes and every
number the predictions are checked against (cheap: the model is arithmetic). The training code (the
measurements) is `memory_model.py`.
"""

from __future__ import annotations

from ..memory import GIB, QWEN25_7B, Arch, Setup, activation_bytes, layer_activation_bytes, peak_bytes
from .memory_model import qwen7b_setups


def max_tokens(arch: Arch, setup: Setup, capacity_gib: float, reserve_gib: float, seq_len: int) -> int:
    """The largest batch × `seq_len` (batch a power of two... or any integer) whose predicted peak fits."""
    budget, batch = (capacity_gib - reserve_gib) * GIB, 0
    while peak_bytes(arch, setup, batch + 1, seq_len)["total"] <= budget:
        batch += 1
    return batch * seq_len


def vocab_vs_layers(setup: Setup, batch: int, seq_len: int, arch: Arch = QWEN25_7B) -> dict[str, float]:
    """GiB of the vocabulary-sized loss buffers (log-probs + 2 gradients) vs the decoder layers' activations
    (saved, plus the recomputed layer under checkpointing)."""
    vocab = 3 * batch * seq_len * arch.vocab * 4
    layers = activation_bytes(arch, setup, batch, seq_len)["decoder layers"]
    if setup.grad_checkpointing:
        layers += layer_activation_bytes(arch, setup, batch, seq_len)
    return {"vocab_gib": vocab / GIB, "layers_gib": layers / GIB}


def measurements(entry) -> dict[str, float]:
    """Every number the page's predictions are checked against."""
    config = entry.config
    cases, fits = entry.table("cases"), entry.table("fits")
    setups = qwen7b_setups(config.target_rank)
    at = fits.set_index(["setup", "batch", "seq_len"])
    split = vocab_vs_layers(setups["gradient checkpointing"], 1, 2048)
    return {**entry.summary,
            "max_abs_saved_error": float(cases.saved_error.abs().max()),
            "max_abs_tensors_error": float(cases.tensors_error.abs().max()),
            "rss_min_excess": float((cases.rss_measured / cases.growth_model - 1).min()),
            "rss_max_excess": float((cases.rss_measured / cases.growth_model - 1).max()),
            "fits_gc_1x2048": bool(at.loc[("gradient checkpointing", 1, 2048), "fits"]),
            "fits_nogc_1x2048": bool(at.loc[("no checkpointing", 1, 2048), "fits"]),
            "peak_gc_1x2048": float(at.loc[("gradient checkpointing", 1, 2048), "peak_gib"]),
            "peak_nogc_1x2048": float(at.loc[("no checkpointing", 1, 2048), "peak_gib"]),
            **{f"{k}_gc_1x2048": v for k, v in split.items()}}
