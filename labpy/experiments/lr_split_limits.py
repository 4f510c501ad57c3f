"""How far does the rate split go, and does it last? The width-64 split past its grid's edge, and four times as long.

`lr_embedding_split` found the width-64 model best with its hidden matrices at a quarter of the embedding's rate, at
1e-2, the highest rate it tried. This extends that grid (a quarter at 2e-2 and 5e-2; an eighth at 1e-2 to 5e-2) and
runs the quarter for 800 steps instead of 200 (the cosine stretched, as in `lr_length`, whose single-rate runs are
the comparison), to see whether the split's gain is the short run's bias toward what the embedding learns first.
"""

from __future__ import annotations

from .lr_embedding_split import SplitRateConfig, split_config
from .lr_sweep import label
from .lr_sweep import run as sweep_run
from .lr_width import SMOKE_WIDTHLESS
from .registry import Experiment, register

LIMITS_WIDTH = 64
WIDER_GRID = {0.25: (2e-2, 5e-2), 0.125: (1e-2, 2e-2, 5e-2)}   # hidden rate ÷ embedding rate: peak rates, 200 steps
LONG_STEPS, LONG_SHARE, LONG_LRS = 800, 0.25, (5e-3, 1e-2, 2e-2)


def _scale(width: int = LIMITS_WIDTH, **common) -> dict[str, SplitRateConfig]:
    steps = common.pop("steps", SplitRateConfig.steps)
    configs = {f"w{width}_{label(lr)}_hidden-x{share:g}": split_config(width, lr, share, steps=steps, **common)
               for share, lrs in WIDER_GRID.items() for lr in lrs}
    long = steps * LONG_STEPS // SplitRateConfig.steps
    configs |= {f"w{width}_{label(lr)}_hidden-x{LONG_SHARE:g}_steps{long}": split_config(width, lr, LONG_SHARE,
                                                                                         steps=long, **common)
                for lr in LONG_LRS}
    return configs


register(Experiment(
    name="lr_split_limits",
    title="How far does the rate split go, and does it last? Past the grid's edge, and 800 steps",
    track="Training dynamics",
    page="experiments/learning-rate-width.qmd",
    version=1,
    config_type=SplitRateConfig,
    scales={"smoke": {k: v for k, v in _scale(width=16, **SMOKE_WIDTHLESS).items() if label(2e-2) in k},
            "cpu": _scale()},
    run=sweep_run,
    description="The width-64 sweep model with the hidden matrices at a quarter or an eighth of the embedding's rate, "
                "lr up to 5e-2, 200 steps; and a quarter for 800 steps at 5e-3 to 2e-2.",
))
