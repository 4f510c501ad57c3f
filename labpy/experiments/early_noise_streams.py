"""Is the route set at the lift, or only weighted: does the run lifted at 800 form the induction circuit on other
batches after its lift?

`early_noise` found that the model of seed 0, with dropout of 0.05 on layers 1 and 2 lifted after 800 steps, forms the
circuit when it is handed the clean run's AdamW moments at the lift, though those moments differ from its own by under
a tenth in mean √v; and that it does not with its own. If a change that small tips the outcome, so may any other: the
state at 800 may set the route, or only weigh the odds. This trains the noisy run (as `early_noise` does) to its lift
at 800, 600 or 1000 steps, and goes on from its own weights and moments without dropout for 3000 steps, on the batches
of another stream after the lift (`after_seed`; the run's own stream is `dropout_lifted`'s, which formed the circuit
after a lift at 600 and not after 800 or 1000):

- `lifted-800-stream-1` … `-4`: four other streams after the lift at 800;
- `lifted-600-stream-1`, `-2` and `lifted-1000-stream-1`, `-2`: two each after the lifts on either side.

Stored as `early_noise` stores its runs, without its lift tables (the two sides are not compared here). No
checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..store import RunResult
from ..validation import require
from .dropout_route import training_fns
from .early_noise import EarlyNoiseConfig, phase_key, state_at_lift, train_on_from
from .registry import Experiment, RunContext, register


@dataclass(frozen=True)
class StreamConfig(EarlyNoiseConfig):
    after_seed: int = 1   # the seed whose batch stream trains the steps after the lift (the run's own: `seed`)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self, isinstance(self.after_seed, int) and self.after_seed >= 0, "after_seed",
                "is out of range; it must be a seed (an integer >= 0), e.g. 1")
        for field in ("clean_weights", "clean_moments", "fresh_optimizer"):   # early_noise mixes; these do not
            require(self, not getattr(self, field), field, "must be left unset: these runs go on from the noisy run "
                    "alone (early_noise mixes the two runs)")


def run(config: StreamConfig, ctx: RunContext) -> RunResult:
    noisy = state_at_lift(phase_key(config), True)
    other_batches, _ = training_fns(replace(config, seed=config.after_seed), offset=config.lifted_at)
    result = train_on_from(config, ctx, noisy.weights, noisy.optimizer, batch_fn=other_batches)
    result.summary["after_seed"] = config.after_seed
    return result


def _configs(lifted_at: int, steps: int, **common) -> dict[str, StreamConfig]:
    first = StreamConfig(lifted_at=lifted_at, steps=steps, **common)
    lifts = {800: (1, 2, 3, 4), 600: (1, 2), 1000: (1, 2)}
    return {f"lifted-{lift}-stream-{s}": replace(first, lifted_at=lift * lifted_at // 800, after_seed=s)
            for lift, streams in lifts.items() for s in streams}


register(Experiment(
    name="early_noise_streams",
    title="Set or weighted: the run lifted at 800 on other batches after its lift",
    track="Attention & circuits",
    page="experiments/early-noise.qmd",
    version=1,
    config_type=StreamConfig,
    scales={"smoke": _configs(lifted_at=8, steps=30, warmup_steps=4, eval_every=10, eval_batch=32, score_batch=8,
                              checkpoint_every=10),
            "cpu": _configs(lifted_at=800, steps=3000)},
    run=run,
    description="attention_depth's 3-layer model (seed 0) trained with dropout of 0.05 on layers 1 and 2's attention "
                "outputs for 800 steps (and 600, 1000), then 3000 more without, from its own weights and AdamW "
                "moments but on other batches after the lift: head scores and the loss by region at every checkpoint.",
))
