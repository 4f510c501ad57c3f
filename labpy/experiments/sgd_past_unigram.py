"""Can SGD take the sweep model past the unigram line at all: a rate between 1 and 10, no momentum, or more steps?

`freeze_or_diverge` trained the learning-rate sweep's model with SGD (momentum 0.9) at lr 0.1, 1 and 10 for the
sweep's 200 steps. No rate diverged and none learned: every seed ended at the unigram line, where a model that knows
only each token's frequency sits, while AdamW at lr 1e-2 ends about 0.7 nats below it. This reruns the same sweep
(corpus, seeds, schedule, clip and decay) with SGD three more ways:

- **lr 3**, momentum 0.9: the rate between the last that stayed calm (1) and the one that spiked (10);
- **lr 10 without momentum**: momentum 0.9 multiplies a steady gradient's step by ten, so this takes steps about
  as large as lr 1 with momentum, but follows each batch's gradient alone;
- **lr 1 for 2000 steps**: ten times the sweep's length (the cosine stretched to match): is SGD slow, or stuck?

Added after those three had run (none passed the line): the sweep's decay of 0.1 is, in torch's SGD, an L2 term in
the gradient, so each step shrinks every weight by lr × 0.1: a tenth at lr 1, where AdamW's decoupled decay at lr
1e-2 takes a thousandth (and momentum, the page notes after the fact, builds that pull up to ten times as much).
Two more runs take it out:

- **lr 1 and lr 0.1 without decay**, momentum 0.9, 200 steps.

And after those (both ended just past the line, at the same loss): **lr 1 without decay for 2000 steps**.

The score and tables are the sweep's (`lr_sweep.run`): the held-out loss, the training curve, the step at which the
loss turned non-finite if it did.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..train import TrainSpec
from ..validation import check_ranges, number_between
from .freeze_or_diverge import VariantConfig
from .lr_sweep import SMOKE
from .lr_sweep import run as sweep_run
from .registry import Experiment, register


@dataclass(frozen=True)
class SgdConfig(VariantConfig):
    optimizer: str = "sgd"
    momentum: float = 0.9        # torch SGD's momentum; 0 follows each batch's gradient alone

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, rules={"momentum": number_between(0, 1, high_open=True)})

    def train_spec(self, seed: int, **changes) -> TrainSpec:
        return super().train_spec(seed, **{"momentum": self.momentum, **changes})


def _scale(**common) -> dict[str, SgdConfig]:
    long = {**common, "steps": 10 * common.get("steps", 200)}
    return {"sgd-lr-3": SgdConfig(lr=3.0, **common),
            "sgd-no-momentum-lr-10": SgdConfig(lr=10.0, momentum=0.0, **common),
            "sgd-lr-1-long": SgdConfig(lr=1.0, **long),
            "sgd-lr-1-no-decay": SgdConfig(lr=1.0, **{**common, "weight_decay": 0.0}),
            "sgd-lr-0.1-no-decay": SgdConfig(lr=0.1, **{**common, "weight_decay": 0.0}),
            "sgd-lr-1-no-decay-long": SgdConfig(lr=1.0, **{**long, "weight_decay": 0.0})}


register(Experiment(
    name="sgd_past_unigram",
    title="Can SGD take the sweep model past the unigram line: lr 3, no momentum, or ten times the steps?",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=SgdConfig,
    scales={"smoke": {k: v for k, v in _scale(**SMOKE).items() if k in ("sgd-no-momentum-lr-10", "sgd-lr-1-long")},
            "cpu": _scale()},
    run=sweep_run,
    description="The learning-rate sweep's model trained by SGD at lr 3 (momentum 0.9), at lr 10 without momentum, "
                "at lr 1 for 2000 steps instead of 200, and at lr 1 and 0.1 without weight decay (lr 1 also for 2000 "
                "steps): does any seed end below the unigram line?",
))
