"""Does the phase change move with the learning rate? The four-head induction model at three more rates.

The stored 2-layer `induction` model (four heads a layer, seed 0, AdamW at lr 1e-3 after a 100-step warm-up, constant
afterwards) sits on a plateau at chance for about two thousand steps, then forms its previous-token and induction heads
at once. Adam moves each weight by about the rate per step, so if the plateau is the time the weights need to travel
far enough, it should last about (distance / rate) steps. This trains the same model, task, seed and schedule at lr
5e-4, 2e-3 and 4e-3, with `induction_head_count`'s run: every head scored at each checkpoint, the curves, and each
layer-1 head zeroed at the end. Only the tables are stored, not the checkpoints.
"""

from __future__ import annotations

from .induction import SMOKE, InductionConfig
from .induction_head_count import run
from .registry import Experiment, register

RATES = (5e-4, 2e-3, 4e-3)   # the stored `induction` run is lr 1e-3

register(Experiment(
    name="induction_lr",
    title="Does the induction phase change move with the learning rate? The four-head model at three more rates",
    track="Attention & circuits",
    page="experiments/induction-heads.qmd",
    version=1,
    config_type=InductionConfig,
    scales={"smoke": {"lr-4e-03": InductionConfig(lr=4e-3, **SMOKE)},
            "cpu": {f"lr-{lr:.0e}": InductionConfig(lr=lr) for lr in RATES}},
    run=run,
    description="The 2-layer, four-head induction model (seed 0) at lr 5e-4, 2e-3 and 4e-3 instead of 1e-3: when the "
                "repeat loss falls, every head's scores at each checkpoint, and each layer-1 head zeroed at the end.",
))
