"""Does a shorter memory let Adam write the full rate at lr 0.1, and does the frozen model then escape?

`adam_step_anatomy` found that at lr 0.1 Adam's step is small because v̂, with β₂ = 0.999, still holds the large
gradients of the first steps while the gradient now is about an eighth of that scale. A shorter memory forgets them:
with β₂ = 0.99 v̂ averages over about 100 steps, with 0.95 over about 20. This reruns the sweep's lr 0.1 run (same
model, corpus, seeds, schedule, decay) at β₂ = 0.999 (the sweep's), 0.99 and 0.95, with `adam_step_anatomy`'s
measures at every step from 39 to 100, and the held-out loss at those steps and at the end: does the step grow, and
does the model leave the unigram line, or diverge?
"""

from __future__ import annotations

from dataclasses import dataclass

from ..store import RunResult
from ..validation import check_ranges, number_between
from .adam_step_anatomy import AdamAnatomyConfig, watch
from .high_rate_weights import HIGH_LR
from .lr_sweep import SMOKE
from .registry import Experiment, RunContext, register

BETA2S = (0.999, 0.99, 0.95)


@dataclass(frozen=True)
class ShortMemoryConfig(AdamAnatomyConfig):
    beta1: float = 0.9
    beta2: float = 0.95

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, rules={"beta1": number_between(0, 1, high_open=True),
                                  "beta2": number_between(0, 1, high_open=True)})


def run(config: ShortMemoryConfig, ctx: RunContext) -> RunResult:
    return watch(config, ctx, "adam_short_memory", heldout=True, betas=(config.beta1, config.beta2))


register(Experiment(
    name="adam_short_memory",
    title="A shorter memory for Adam at a high learning rate: β₂ = 0.999, 0.99 and 0.95 at lr 0.1",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=ShortMemoryConfig,
    scales={"smoke": {"beta2-0.95": ShortMemoryConfig(lr=HIGH_LR, **SMOKE, window_start=2, window_end=6)},
            "cpu": {f"beta2-{b:g}": ShortMemoryConfig(lr=HIGH_LR, beta2=b) for b in BETA2S}},
    run=run,
    description="The sweep's lr 0.1 run with Adam's β₂ at 0.999, 0.99 and 0.95: Adam's step against the rate, its "
                "carry and freshness, and the held-out loss.",
))
