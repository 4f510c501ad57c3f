"""Does the best learning rate move with the model's width? The sweep at half and at twice the width.

The learning-rate sweep trains one width (64, MLP 192). Under the standard parametrisation, with Adam, every weight
moves by about the rate per step whatever the width, so a hidden layer's output changes by about rate × fan-in:
twice the width, twice the change. μP (Yang et al. 2022) rescales the hidden layers' rates by 1/width to undo this,
and predicts that without it the best rate falls as 1/width. The embedding and unembedding, whose fan-in does not
grow with the width, should not move. This reruns the sweep (same corpus, seeds, schedule, clip and decay) at widths
32 and 128, with the MLP three times the width and four heads, at the six rates around the width-64 optimum; the
stored sweep is the width-64 column.
"""

from __future__ import annotations

from .lr_sweep import SMOKE, SweepConfig, label
from .lr_sweep import run as sweep_run
from .registry import Experiment, register

WIDTHS = (32, 128)                                   # the stored lr_sweep is width 64
WIDTH_LRS = (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2)      # a subset of lr_sweep's rates, around its optimum


def width_config(width: int, lr: float, **common) -> SweepConfig:
    """The sweep's model at `width`, its MLP three times as wide, as in the sweep (64 → 192)."""
    return SweepConfig(lr=lr, hidden_size=width, intermediate_size=3 * width, **common)


SMOKE_WIDTHLESS = {k: v for k, v in SMOKE.items() if k not in ("hidden_size", "intermediate_size")}


def _scale(widths: tuple[int, ...] = WIDTHS, **common) -> dict[str, SweepConfig]:
    return {f"w{width}_{label(lr)}": width_config(width, lr, **common) for width in widths for lr in WIDTH_LRS}


register(Experiment(
    name="lr_width",
    title="Does the best learning rate move with width? The sweep at widths 32 and 128",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=SweepConfig,
    scales={"smoke": {k: v for k, v in _scale(widths=(8, 32), **SMOKE_WIDTHLESS).items() if k.endswith(label(1e-2))},
            "cpu": _scale()},
    run=sweep_run,
    description="The learning-rate sweep's model at widths 32 and 128 (MLP three times the width), lr 1e-3 to 5e-2, "
                "three seeds each: where the held-out loss is lowest at each width.",
))
