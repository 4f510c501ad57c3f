"""Does the rate split's optimum move with width? The hidden matrices' rate swept at widths 32, 64 and 128.

`lr_split_parts` and `lr_split_qk` found the width-64 model best with the embedding at 1e-1 to 2e-1 and the hidden
matrices (attention and MLP projections) near 6.25e-3. μP (for Adam) says the hidden matrices' rate should fall as one
over the width while the embedding's, the norms' and the biases' stay put. Here, in the standard parametrisation, the
embedding at 1e-1 and 2e-1 and the hidden matrices at five absolute rates from 1.5625e-3 to 2.5e-2, at each width.
"""

from __future__ import annotations

from .lr_embedding_split import SplitRateConfig, split_config
from .lr_sweep import label
from .lr_sweep import run as sweep_run
from .lr_width import SMOKE_WIDTHLESS
from .registry import Experiment, register

WIDTH_GRID = (32, 64, 128)
EMBEDDING_LRS = (1e-1, 2e-1)                               # the peak rate: the embedding's, the norms' and the biases'
HIDDEN_LRS = (1.5625e-3, 3.125e-3, 6.25e-3, 1.25e-2, 2.5e-2)  # the hidden matrices' own rate, absolute


def _scale(widths: tuple[int, ...] = WIDTH_GRID, **common) -> dict[str, SplitRateConfig]:
    return {f"w{width}_{label(lr)}_hidden-x{hidden / lr:g}": split_config(width, lr, hidden / lr, **common)
            for width in widths for lr in EMBEDDING_LRS for hidden in HIDDEN_LRS}


register(Experiment(
    name="lr_split_width",
    title="Does the rate split's optimum move with width?",
    track="Training dynamics",
    page="experiments/learning-rate-width.qmd",
    version=1,
    config_type=SplitRateConfig,
    scales={"smoke": {k: v for k, v in _scale((8, 16), **SMOKE_WIDTHLESS).items() if "hidden-x0.125" in k},
            "cpu": _scale()},
    run=sweep_run,
    description="The sweep model in the standard parametrisation at widths 32, 64 and 128, the embedding at 1e-1 or "
                "2e-1 and the hidden matrices at 1.5625e-3 to 2.5e-2, 200 steps, three seeds.",
))
