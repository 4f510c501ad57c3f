"""Does a larger embedding in the stream let the tied model's single rate go higher?

`lr_embed_scale` found that multiplying the embedded tokens by 4 or 8 on their way into the stream moves the hidden
matrices' cliff up (with the embedding at 1e-1), but not the best loss. The single-rate sweep (`lr_sweep`) has its
own high side, where every part takes the same rate and the model freezes near the unigram line. Here the width-64
tied model runs single rates around and above its best (5e-3 to 5e-2) with the embedded tokens × 1, 4 and 8: does
the multiplier let a single rate go higher, and does that lower the best loss, which the split could not?
"""

from __future__ import annotations

from .lr_cliff_timeline import EmbedScaleConfig
from .lr_embed_scale import EMBED_SCALES
from .lr_embedding_split import split_config
from .lr_sweep import label
from .lr_sweep import run as sweep_run
from .lr_width import SMOKE_WIDTHLESS
from .registry import Experiment, register

SINGLE_LRS = (5e-3, 1e-2, 2e-2, 5e-2)             # the sweep's best (5e-3) and the high side above it


def _scale(**common) -> dict[str, EmbedScaleConfig]:
    width = common.pop("hidden_size", 64)
    return {f"w{width}_single_{label(lr)}_embedding-x{scale:g}":
            split_config(width, lr, 1.0, EmbedScaleConfig, tie_readout=True, embed_scale=scale, **common)
            for scale in EMBED_SCALES for lr in SINGLE_LRS}


register(Experiment(
    name="lr_embed_scale_single",
    title="Does a larger embedding in the stream let the tied model's single rate go higher?",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=EmbedScaleConfig,
    scales={"smoke": _scale(hidden_size=16, **SMOKE_WIDTHLESS), "cpu": _scale()},
    run=sweep_run,
    description="The width-64 tied model at single rates 5e-3 to 5e-2 with the embedded tokens × 1, 4 or 8.",
))
