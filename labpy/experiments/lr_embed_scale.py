"""Does a larger embedding in the stream do for the tied model what untying does?

`lr_cliff_timeline` found that multiplying the embedded tokens by 4 on their way into the stream (the tied readout
untouched) takes away the cliff that the hidden matrices at 2.5e-2 fall off with the embedding at 1e-1. Here the
width-64 tied model runs the hidden-rate sweep with the embedding at 1e-1 and its input multiplied by 1, 4 and 8
(Gemma multiplies by √d, which is 8 at this width), the hidden matrices at 6.25e-3 to 5e-2: does the multiplier move
the best hidden rate up, and how much of the untied model's lead (`lr_untied_width`) does it close?
"""

from __future__ import annotations

from .lr_cliff_timeline import EmbedScaleConfig
from .lr_embedding_split import split_config
from .lr_sweep import label
from .lr_sweep import run as sweep_run
from .lr_width import SMOKE_WIDTHLESS
from .registry import Experiment, register

SCALE_LR = 1e-1                                    # the embedding's rate, as in `lr_untied_width`'s sweep
SCALE_HIDDEN_LRS = (6.25e-3, 1.25e-2, 2.5e-2, 5e-2)  # the tied model's best (6.25e-3) up to twice its cliff
EMBED_SCALES = (1.0, 4.0, 8.0)


def _scale(**common) -> dict[str, EmbedScaleConfig]:
    width = common.pop("hidden_size", 64)
    return {f"w{width}_{label(SCALE_LR)}_hidden-{hidden:g}_embedding-x{scale:g}":
            split_config(width, SCALE_LR, hidden / SCALE_LR, EmbedScaleConfig, tie_readout=True, embed_scale=scale,
                         **common)
            for scale in EMBED_SCALES for hidden in SCALE_HIDDEN_LRS}


register(Experiment(
    name="lr_embed_scale",
    title="Does a larger embedding in the stream do for the tied model what untying does?",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=EmbedScaleConfig,
    scales={"smoke": _scale(hidden_size=16, **SMOKE_WIDTHLESS), "cpu": _scale()},
    run=sweep_run,
    description="The width-64 tied model with the embedding at 1e-1 and its input × 1, 4 or 8, the hidden matrices "
                "at 6.25e-3 to 5e-2.",
))
