"""When does the rate decide the route? The four-head induction model with its rate changed once, and other seeds.

At lr 1e-3 the four-head model (seed 0) grows a previous-token head and an induction head; at 2e-3 it slides off the
plateau early (the repeat loss is already falling by step 800) and ends on the route without induction heads. Two
readings: the higher rate finds that route first and the induction circuit never gets its chance, or the higher rate
cannot hold the induction circuit at all. A rate changed once in mid-run separates them: down from 2e-3 to 1e-3 before
or during the early slide (at step 600 or 1400, and later at 800, 1000 and 1200), and up from 1e-3 to 2e-3 before the
phase change or after the circuit has formed. Three more runs ask whether the route is a matter of the seed: lr 2e-3
with seeds 1 and 2, and lr 1e-3 with seed 2 (seed 1 at 1e-3 is `induction_head_count`'s `heads-4-s1`). The run is
`induction_head_count`'s: every head scored at each checkpoint, and each layer-1 head zeroed at the end; only the tables
are stored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..train import TrainSpec
from ..validation import POSITIVE, POSITIVE_INT, check_ranges, or_none, require
from .induction import SMOKE, InductionConfig
from .induction_head_count import run
from .registry import Experiment, register


@dataclass(frozen=True)
class RateSwitchConfig(InductionConfig):
    switch_step: int | None = None   # from this update on the rate is `lr_after` instead of `lr`
    lr_after: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, rules={"switch_step": or_none(POSITIVE_INT), "lr_after": or_none(POSITIVE)})
        require(self, (self.switch_step is None) == (self.lr_after is None), "lr_after",
                f"must be set together with switch_step (it is {self.switch_step}); set both or neither")
        require(self, self.switch_step is None or self.warmup_steps < self.switch_step < self.steps, "switch_step",
                f"must fall after the warm-up and before the last step ({self.warmup_steps} < switch_step < "
                f"{self.steps})")

    def train_spec(self) -> TrainSpec:
        return replace(super().train_spec(), switch_step=self.switch_step, switch_lr=self.lr_after)


def _scale(steps: int = 6000, **common) -> dict[str, RateSwitchConfig]:
    def at(step: int) -> int:                       # the switch steps, scaled with the run's length
        return max(1, round(step * steps / 6000))

    return {"down-at-600": RateSwitchConfig(lr=2e-3, switch_step=at(600), lr_after=1e-3, steps=steps, **common),
            "down-at-1400": RateSwitchConfig(lr=2e-3, switch_step=at(1400), lr_after=1e-3, steps=steps, **common),
            # added after route_race had been read: does the route turn when layer 0 turns from the previous token?
            **{f"down-at-{step}": RateSwitchConfig(lr=2e-3, switch_step=at(step), lr_after=1e-3, steps=steps, **common)
               for step in (800, 1000, 1200)},
            "up-at-1000": RateSwitchConfig(lr=1e-3, switch_step=at(1000), lr_after=2e-3, steps=steps, **common),
            "up-at-3000": RateSwitchConfig(lr=1e-3, switch_step=at(3000), lr_after=2e-3, steps=steps, **common),
            "lr-2e-03-s1": RateSwitchConfig(lr=2e-3, seed=1, steps=steps, **common),
            "lr-2e-03-s2": RateSwitchConfig(lr=2e-3, seed=2, steps=steps, **common),
            "lr-1e-03-s2": RateSwitchConfig(lr=1e-3, seed=2, steps=steps, **common)}


SMOKE_SWITCH = {**SMOKE, "warmup_steps": 5}   # the switch must fall after the warm-up, even in a 60-step run

register(Experiment(
    name="induction_rate_switch",
    title="When does the rate decide the route? The four-head model with its rate changed once, and two more seeds",
    track="Attention & circuits",
    page="experiments/induction-heads.qmd",
    version=1,
    config_type=RateSwitchConfig,
    scales={"smoke": {k: v for k, v in _scale(**SMOKE_SWITCH).items() if k in ("down-at-600", "up-at-3000")},
            "cpu": _scale()},
    run=run,
    description="The 2-layer, four-head induction model with its rate switched once (2e-3 → 1e-3 at step 600 or "
                "1400, 1e-3 → 2e-3 at step 1000 or 3000), and at lr 2e-3 with seeds 1 and 2 and lr 1e-3 with seed 2: "
                "every head's scores at each checkpoint, the repeat loss over training, and each layer-1 head zeroed.",
))
