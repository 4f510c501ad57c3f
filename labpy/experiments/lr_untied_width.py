"""Does the untied readout's gain hold at other widths and over 800 steps?

`lr_untied` found the width-64 model 0.2 to 0.5 nats better with its readout untied, at one rate and split. Here the
untied model runs `lr_split_width`'s hidden-rate sweep (the embedding at 1e-1, the hidden matrices at 1.5625e-3 to
2.5e-2) at widths 32, 64 and 128, whose tied runs are the comparison; and the width-64 split at 5e-2 (the hidden
matrices at an eighth) runs for 800 steps, tied and untied, the cosine stretched as in `lr_length`.
"""

from __future__ import annotations

from .lr_embedding_split import split_config
from .lr_split_width import HIDDEN_LRS, WIDTH_GRID
from .lr_sweep import label
from .lr_sweep import run as sweep_run
from .lr_untied import UntiedConfig
from .lr_width import SMOKE_WIDTHLESS
from .registry import Experiment, register

UNTIED_WIDTH_LR = 1e-1                          # the embedding's rate of the width sweep
LONG_LR, LONG_SHARE, LONG_STEPS = 5e-2, 0.125, 800


def _scale(widths: tuple[int, ...] = WIDTH_GRID, long_width: int = 64, **common) -> dict[str, UntiedConfig]:
    steps = common.pop("steps", UntiedConfig.steps)

    def config(width: int, lr: float, share: float, **changes) -> UntiedConfig:
        return split_config(width, lr, share, UntiedConfig, **{"steps": steps, **common, **changes})

    configs = {f"w{w}_untied_{label(UNTIED_WIDTH_LR)}_hidden-x{h / UNTIED_WIDTH_LR:g}":
               config(w, UNTIED_WIDTH_LR, h / UNTIED_WIDTH_LR) for w in widths for h in HIDDEN_LRS}
    long = steps * LONG_STEPS // UntiedConfig.steps
    for tied in (True, False):
        name = f"w{long_width}_{'tied' if tied else 'untied'}_{label(LONG_LR)}_hidden-x{LONG_SHARE:g}_steps{long}"
        configs[name] = config(long_width, LONG_LR, LONG_SHARE, steps=long, tie_readout=tied)
    return configs


register(Experiment(
    name="lr_untied_width",
    title="Does the untied readout's gain hold at other widths and over 800 steps?",
    track="Training dynamics",
    page="experiments/learning-rate-width.qmd",
    version=1,
    config_type=UntiedConfig,
    scales={"smoke": {k: v for k, v in _scale((8, 16), long_width=16, **SMOKE_WIDTHLESS).items()
                      if "x0.125" in k or "steps" in k},
            "cpu": _scale()},
    run=sweep_run,
    description="The untied sweep model at widths 32, 64 and 128 (embedding 1e-1, hidden matrices 1.5625e-3 to "
                "2.5e-2, 200 steps); and the width-64 split at 5e-2 (an eighth) for 800 steps, tied and untied.",
))
