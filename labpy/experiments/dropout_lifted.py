"""Does dropout on layers 1 and 2 keep the induction circuit from forming only while it is on, or does the route it
sends the model down shut the circuit out for good?

In `dropout_layers`, dropout of 0.05 on the 3-layer model's layer-1 and layer-2 attention outputs kept the circuit
from forming in 8000 steps; the model learned to copy late, by the route without an induction head. Here the same
run (same seed, data and mask streams) has its dropout lifted after the first `lifted_at` steps and trains on
without dropout for `AFTER` more (seed 0 unless named):

- `lifted-1000-s0`: before the circuit forms without dropout (its repeat loss falls below 2 nats near step 1600);
- `lifted-2000-s0`, `lifted-4000-s0`: after it would have formed, while the dropout run still barely copies;
- `lifted-6000-s0`: after the dropout run has learned to copy by the other route (below 2 nats near step 5150);
- `lifted-200-s0` … `lifted-800-s0`: earlier, every 200 steps up to where the model without dropout starts to copy,
  after lifting at 1000 had not let the circuit form;
- `lifted-200-s1`, `lifted-1000-s1`: seed 1 (its own initialisation, data and masks), lifted at 200 and at 1000.

If the noise blocks the circuit only while it is on, the circuit forms about as soon after each lift; if the route
the model has taken shuts it out, it forms later the later the lift, or not at all. Until its lift each run is
`dropout_layers`' run of its seed at 0.05 on layers 1 and 2 (`output-layers12-p005-long-s0`, `-p005-s1`), step for
step.

Stored as `dropout_layers` stores its runs (training curves, head scores at every checkpoint, the final model's
loss by region and where its heads look), plus the loss by region at every checkpoint (`checkpoint_regions`): the
ambiguity cost over training tells the two routes apart; no checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd
import torch

from ..interp.ambiguity import region_losses, region_masks
from ..store import RunResult
from ..validation import require
from .dropout_layers import DropoutLayersConfig
from .dropout_route import checkpoint_models, scored_tables, train_with_dropout
from .induction import fixed_eval_batch, next_token_losses
from .registry import Experiment, RunContext, register

AFTER = 3000   # steps trained without dropout after the lift


@dataclass(frozen=True)
class DropoutLiftedConfig(DropoutLayersConfig):
    lifted_at: int = 1000   # training steps 0 .. lifted_at - 1 drop; the rest train without dropout

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self, isinstance(self.lifted_at, int) and 0 < self.lifted_at < self.steps, "lifted_at",
                f"is out of range; it must be a step between 1 and steps - 1 = {self.steps - 1}, e.g. 1000")

    def dropout_on(self, step: int) -> bool:
        return step < self.lifted_at


def checkpoint_regions(config: DropoutLayersConfig, result: RunResult, offset: int = 0) -> pd.DataFrame:
    """The loss by region (first copy, unambiguous and ambiguous repeat targets) on the attention-depth page's shared
    batch at every checkpoint: one row per (step, region), steps counted from `offset` (where training started)."""
    batch = fixed_eval_batch(config)
    masks = region_masks(batch)
    rows = []
    for step, model in checkpoint_models(config, result):
        with torch.no_grad():
            losses = region_losses(next_token_losses(model, batch.tokens), masks)
        rows += [{"step": offset + step, "region": region, "loss": loss} for region, loss in losses.items()]
    return pd.DataFrame(rows)


def run(config: DropoutLiftedConfig, ctx: RunContext) -> RunResult:
    result, offset = train_with_dropout(config, ctx)
    tables = {**scored_tables(config, result, offset), "checkpoint_regions": checkpoint_regions(config, result)}
    return RunResult(tables=tables, summary={**result.summary, "start_step": offset, "lifted_at": config.lifted_at},
                     seed=config.seed)


def _configs(lifts: dict[str, tuple[int, int]], scale_down: int, after: int,
             **common) -> dict[str, DropoutLiftedConfig]:
    first = DropoutLiftedConfig(dropout=0.05, dropout_layers=(1, 2), steps=2 * after, lifted_at=after, **common)
    return {label: replace(first, lifted_at=lift // scale_down, steps=lift // scale_down + after, seed=seed)
            for label, (lift, seed) in lifts.items()}


LIFTS = {"lifted-1000-s0": (1000, 0), "lifted-2000-s0": (2000, 0), "lifted-4000-s0": (4000, 0),
         "lifted-6000-s0": (6000, 0), "lifted-200-s0": (200, 0), "lifted-400-s0": (400, 0), "lifted-600-s0": (600, 0),
         "lifted-800-s0": (800, 0), "lifted-200-s1": (200, 1), "lifted-1000-s1": (1000, 1)}   # label: (lift, seed)

register(Experiment(
    name="dropout_lifted",
    title="Dropout on layers 1 and 2, lifted: does the induction circuit form once the noise stops?",
    track="Attention & circuits",
    page="experiments/attention-depth.qmd",
    version=1,
    config_type=DropoutLiftedConfig,
    scales={"smoke": _configs(LIFTS, scale_down=100, after=30, eval_every=10, eval_batch=32, score_batch=8,
                              checkpoint_every=10),
            "cpu": _configs(LIFTS, scale_down=1, after=AFTER, checkpoint_every=100)},
    run=run,
    description="attention_depth's 3-layer model (seeds 0 and 1) trained with dropout of 0.05 on layers 1 and 2's "
                "attention outputs for its first 200 to 1000 (every 200), 2000, 4000 or 6000 steps (seed 1: 200 and "
                "1000), then 3000 more without: head scores and the loss by region at every checkpoint.",
))
