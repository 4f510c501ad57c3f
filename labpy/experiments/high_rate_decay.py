"""Does a strong weight decay keep a high learning rate learning?

`high_rate_damage` found the damage of the sweep's lr 0.1 phase in the weights' size: they grow six to fourteen times
their initial RMS, and scaled back they learn at a fresh model's pace. AdamW's decoupled weight decay shrinks every
weight by a factor 1 − lr·decay per step, so a stronger decay caps how far the weights can grow. This experiment is
the sweep's lr 0.1 run again (same model, corpus, seeds, schedule), with a weight decay 10 and 30 times the sweep's
0.1 and, added after those, 3, 5 and 20 times; the sweep's own entry is the 0.1 side.
"""

from __future__ import annotations

from .lr_sweep import SMOKE, SweepConfig, run
from .registry import Experiment, register

DECAYS = (1.0, 3.0)
BAND = (0.3, 0.5, 2.0)       # added after decay 1 kept two seeds learning and 3 none: where does the band end?

register(Experiment(
    name="high_rate_decay",
    title="Does a strong weight decay keep a high learning rate learning?",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=SweepConfig,
    scales={"smoke": {f"wd-{wd:g}": SweepConfig(**{**SMOKE, "lr": 5e-2, "weight_decay": wd}) for wd in DECAYS},
            "cpu": {f"wd-{wd:g}": SweepConfig(lr=0.1, weight_decay=wd) for wd in sorted(DECAYS + BAND)}},
    run=run,
    description="The learning-rate sweep's lr 0.1 run with weight decays from 0.3 to 3 instead of 0.1, three seeds.",
))
