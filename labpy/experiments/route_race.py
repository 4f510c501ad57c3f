"""Which route leads on the plateau? The four-head model's first 1600 steps at lr 1e-3 and 2e-3, read every 100.

`induction_rate_switch` found that the rate decides between the induction circuit and the route without induction
heads on the plateau, between steps 600 and 1400 at lr 2e-3, before any previous-token head. `copying_routes` had
found what that route is: an induction circuit at a distance, layer 0 looking 6 to 15 tokens back and layer 1 reading
from keys as far past the earlier occurrence of the query's token. This retrains the four-head model (seed 0 at both
rates, seeds 1 and 2 at 2e-3, seed 2 at 1e-3; the same configs as the stored runs, so the same weights) for the first
1600 steps only, and at every 100th step measures where its heads look (`copying_routes.attention_routes`), the
repeat's accuracy by segment length and every head's scores: `blurred_circuit_longer`'s run.
"""

from __future__ import annotations

from .blurred_circuit_longer import run
from .induction import SMOKE, InductionConfig
from .registry import Experiment, register

RACE = dict(steps=1600, checkpoint_every=100)    # the plateau and the decision window; the fall starts near 1650
RUNS = {"lr-1e-03-s0": (1e-3, 0), "lr-2e-03-s0": (2e-3, 0), "lr-2e-03-s1": (2e-3, 1), "lr-2e-03-s2": (2e-3, 2),
        "lr-1e-03-s2": (1e-3, 2)}

register(Experiment(
    name="route_race",
    title="Which route leads on the plateau? Where the four-head model's heads look in its first 1600 steps",
    track="Attention & circuits",
    page="experiments/induction-heads.qmd",
    version=1,
    config_type=InductionConfig,
    scales={"smoke": {"lr-2e-03-s0": InductionConfig(lr=2e-3, **SMOKE)},
            "cpu": {label: InductionConfig(lr=lr, seed=seed, **RACE) for label, (lr, seed) in RUNS.items()}},
    run=run,
    description="The four-head induction model's first 1600 steps at lr 1e-3 (seeds 0 and 2) and 2e-3 (seeds 0, 1 and "
                "2): where its layer-0 and layer-1 heads look, the repeat's accuracy by segment length and every "
                "head's scores at every 100th step.",
))
