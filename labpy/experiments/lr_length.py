"""Does the best learning rate move with the training length? The sweep run four times as long.

The learning-rate sweep trains its model for 200 steps, a short budget: its best rate (5e-3) is the best for 200
steps. A longer run takes more steps at every rate, so a lower rate has more time to cover the same distance, while
a high rate's noise has more steps to pile up; Bjorck et al. (2024, "Scaling optimal LR across token horizons")
found the best rate of LLM pretraining falls as the run grows longer. This reruns the sweep (same model, corpus,
seeds, warm-up, clip and decay; the cosine stretched to the new length) for 800 steps at the six rates around the
200-step optimum; the stored sweep is the 200-step column.
"""

from __future__ import annotations

from .lr_sweep import SMOKE, SweepConfig, label
from .lr_sweep import run as sweep_run
from .lr_width import WIDTH_LRS
from .registry import Experiment, register

LENGTH_FACTOR = 4        # 800 steps against the sweep's 200


def _scale(**common) -> dict[str, SweepConfig]:
    steps = LENGTH_FACTOR * common.pop("steps", SweepConfig.steps)
    return {f"steps{steps}_{label(lr)}": SweepConfig(lr=lr, steps=steps, **common) for lr in WIDTH_LRS}


register(Experiment(
    name="lr_length",
    title="Does the best learning rate move with the training length? The sweep for 800 steps instead of 200",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=SweepConfig,
    scales={"smoke": {k: v for k, v in _scale(**SMOKE).items() if k.endswith(label(1e-2))},
            "cpu": _scale()},
    run=sweep_run,
    description="The learning-rate sweep's model trained for 800 steps instead of 200 (the cosine stretched), lr "
                "1e-3 to 5e-2, three seeds each: where the held-out loss is lowest after the longer run.",
))
