"""Does a larger embedding in the stream do for the tied model what untying does, or let its single rate go higher?

`lr_cliff_timeline` found that multiplying the embedded tokens by 4 on their way into the stream (the tied readout
untouched) takes away the cliff that the hidden matrices at 2.5e-2 fall off with the embedding at 1e-1. Two sweeps
of the width-64 tied model with the embedded tokens × 1, 4 and 8 (Gemma multiplies by √d, which is 8 at this width):

- `lr_embed_scale`: the embedding at 1e-1, the hidden matrices at 6.25e-3 to 5e-2. Does the multiplier move the best
  hidden rate up, and how much of the untied model's lead (`lr_untied_width`) does it close?
- `lr_embed_scale_single`: one rate for every part, 5e-3 (the single-rate sweep's best) to 5e-2, on the high side
  where that sweep ends far above its best. Does the multiplier let the single rate go higher?
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
SINGLE_LRS = (5e-3, 1e-2, 2e-2, 5e-2)              # the single-rate sweep's best (5e-3) and the high side above it
EMBED_SCALES = (1.0, 4.0, 8.0)


def _scale(single: bool, **common) -> dict[str, EmbedScaleConfig]:
    """Every multiplier at every point of the grid: (peak rate, hidden share) by name."""
    width = common.pop("hidden_size", 64)
    points = ({f"single_{label(lr)}": (lr, 1.0) for lr in SINGLE_LRS} if single else
              {f"{label(SCALE_LR)}_hidden-{hidden:g}": (SCALE_LR, hidden / SCALE_LR) for hidden in SCALE_HIDDEN_LRS})
    return {f"w{width}_{point}_embedding-x{scale:g}":
            split_config(width, lr, share, EmbedScaleConfig, tie_readout=True, embed_scale=scale, **common)
            for scale in EMBED_SCALES for point, (lr, share) in points.items()}


for _single, _name, _title, _description in (
        (False, "lr_embed_scale", "Does a larger embedding in the stream do for the tied model what untying does?",
         "The width-64 tied model with the embedding at 1e-1 and its input × 1, 4 or 8, the hidden matrices at "
         "6.25e-3 to 5e-2."),
        (True, "lr_embed_scale_single", "Does a larger embedding in the stream let the tied model's single rate go "
         "higher?", "The width-64 tied model at single rates 5e-3 to 5e-2 with the embedded tokens × 1, 4 or 8.")):
    register(Experiment(
        name=_name, title=_title, track="Training dynamics", page="experiments/learning-rate-width.qmd", version=1,
        config_type=EmbedScaleConfig, run=sweep_run, description=_description,
        scales={"smoke": _scale(_single, hidden_size=16, **SMOKE_WIDTHLESS), "cpu": _scale(_single)},
    ))
