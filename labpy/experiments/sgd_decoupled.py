"""Can SGD keep a weight decay and still learn, if the decay is decoupled as AdamW's is?

`sgd_past_unigram` found that the sweep's weight decay of 0.1 held SGD at the unigram line: torch's SGD adds the decay
to the gradient (an L2 term), and momentum 0.9 builds that pull up tenfold, to the whole weight per step at lr 1.
Without the decay SGD learns, to the bigram line in 2000 steps. AdamW keeps its decay out of the gradient: each step
shrinks every weight by lr × decay, whatever the momentum holds (Loshchilov & Hutter 2019). This trains the sweep's
model by the same SGD (momentum 0.9, clip, warm-up and cosine) with the decay decoupled that way (`optimizer="sgdw"`):

- at lr 1 and lr 0.1 with the sweep's decay of 0.1 (each step shrinks the weights by 10% and by 1% at the peak rate);
- at lr 1 with a decay of 0.01 (1% a step), for 200 steps and for 2000.

The score and tables are the sweep's (`lr_sweep.run`).
"""

from __future__ import annotations

from .lr_sweep import SMOKE
from .lr_sweep import run as sweep_run
from .registry import Experiment, register
from .sgd_past_unigram import SgdConfig


def _scale(**common) -> dict[str, SgdConfig]:
    long = {**common, "steps": 10 * common.get("steps", 200)}
    return {"sgdw-lr-1-decay-0.1": SgdConfig(optimizer="sgdw", lr=1.0, weight_decay=0.1, **common),
            "sgdw-lr-0.1-decay-0.1": SgdConfig(optimizer="sgdw", lr=0.1, weight_decay=0.1, **common),
            "sgdw-lr-1-decay-0.01": SgdConfig(optimizer="sgdw", lr=1.0, weight_decay=0.01, **common),
            "sgdw-lr-1-decay-0.01-long": SgdConfig(optimizer="sgdw", lr=1.0, weight_decay=0.01, **long)}


register(Experiment(
    name="sgd_decoupled",
    title="Can SGD keep a weight decay and still learn, with the decay decoupled as AdamW's?",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=SgdConfig,
    scales={"smoke": {k: v for k, v in _scale(**SMOKE).items()
                      if k in ("sgdw-lr-1-decay-0.1", "sgdw-lr-1-decay-0.01-long")},
            "cpu": _scale()},
    run=sweep_run,
    description="The sweep's model trained by SGD (momentum 0.9) with the weight decay decoupled as AdamW's: lr 1 and "
                "0.1 at decay 0.1, lr 1 at decay 0.01 for 200 and 2000 steps: does any seed pass the unigram line?",
))
