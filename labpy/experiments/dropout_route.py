"""What in dropout keeps the 3-layer models from growing induction heads: which of its two places, and is it what
dropout rewards or only the path training takes?

On the attention-depth page, 3-layer attention-only models trained with dropout of 0.1 (on the attention
probabilities and on each attention layer's output, as GPT-2 does) grew neither a previous-token head nor an
induction head, and copied late, by another route. This trains `attention_depth`'s 3-layer model (seed 0) three ways:

- `pattern-s0`: dropout on the attention probabilities only, from initialisation;
- `output-s0`: dropout on the attention layers' outputs only, from initialisation;
- `plain-then-dropout-s0`: `attention_depth`'s `three_layer-s0` (trained without dropout, with induction heads),
  trained further with dropout at both places, its data and mask streams continuing where its training stopped.
  The store keeps no optimiser state, so AdamW starts afresh (with the usual warm-up).

Stored for each: the training curves, every head's previous-token and induction scores at every checkpoint
(`scores`), and at the end the loss by region and where each head looks on ambiguous targets (`regions`, `heads`,
as `route_ambiguity` measures them). The checkpoints themselves are not stored. The page's other measurement, the
stored models with dropout switched on, is `dropout_switched_on`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pandas as pd
import torch

from ..interp.heads import head_scores_table
from ..models.toy import load_toy_transformer
from ..store import RunResult, as_stored, checkpoint_name
from ..tasks.repeated_tokens import sample
from ..train import step_generator
from ..validation import check_ranges, one_of, require
from .attention_depth import DROPOUT_PLACES, DROPOUT_SEED, DepthConfig, DropoutBatch, dropout_hooks
from .induction import next_token_losses, score_tokens, train_on_repeats
from .registry import SCALES, Experiment, RunContext, register, results
from .route_ambiguity import ambiguity_tables


@dataclass(frozen=True)
class DropoutRouteConfig(DepthConfig):
    dropout: float = 0.1         # GPT-2's, as on the attention-depth page
    dropout_at: str = "both"     # "pattern" (attention probabilities), "output" (attention-layer outputs) or "both"
    start_from: str = ""         # an `attention_depth` label whose final weights start the run; "" = initialisation
    start_scale: str = "cpu"     # the scale of that stored run

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, rules={"dropout_at": one_of(*DROPOUT_PLACES), "start_scale": one_of(*SCALES)})
        require(self, self.dropout > 0, "dropout", "is out of range; this experiment trains with dropout, so it must "
                "be > 0 (attention_depth trains without)")

    @property
    def sites(self) -> tuple[str, ...]:
        return DROPOUT_PLACES[self.dropout_at]

    def dropout_hooks(self, model, generator: torch.Generator) -> list[tuple[str, object]]:
        """The training-time dropout of this config; variants drop elsewhere by overriding it."""
        return dropout_hooks(model, self.dropout, generator, self.sites)

    def dropout_on(self, step: int) -> bool:
        """Whether training step `step` (counted from the stored model's start) drops; variants lift it."""
        return True


def starting_point(config: DropoutRouteConfig) -> tuple[dict[str, torch.Tensor] | None, int]:
    """The stored model's final weights and how many steps it was trained (None, 0 for a fresh start); `lab run`
    trains that run first if the store lacks it."""
    if not config.start_from:
        return None, 0
    entry = results("attention_depth", config.start_scale)[config.start_from]
    require(config, entry.config.model_config() == config.model_config(), "start_from",
            f"names a model of another shape ({entry.config.model_config()}); it must match this config's")
    step = max(entry.checkpoint_steps())
    return entry.step_checkpoint(step), step


def training_fns(config: DropoutRouteConfig, offset: int = 0, dropout_on: Callable[[int], bool] | None = None):
    """`train`'s batch_fn and loss_fn for the config: the seed's batch stream from step `offset` on, and the loss with
    the config's dropout on the steps (counted from initialisation) that `dropout_on` (default the config's) names.
    The masks depend only on the seed and the step, so runs that share steps share them."""
    task, dropout_on = config.task(), dropout_on or config.dropout_on

    def batch_fn(step: int) -> DropoutBatch:   # the stream continues where a stored model's training stopped
        return DropoutBatch(sample(task, config.batch_size, step_generator(config.seed, offset + step)).tokens,
                            offset + step)

    def loss_fn(model, batch: DropoutBatch) -> torch.Tensor:
        generator = step_generator(DROPOUT_SEED + config.seed, batch.step)
        hooks = config.dropout_hooks(model, generator) if dropout_on(batch.step) else []
        with model.hooks(fwd_hooks=hooks):
            return next_token_losses(model, batch.tokens).mean()

    return batch_fn, loss_fn


def train_with_dropout(config: DropoutRouteConfig, ctx: RunContext) -> tuple[RunResult, int]:
    """The config's training run (its checkpoints kept in memory) and the step it started from."""
    initial, offset = starting_point(config)
    batch_fn, loss_fn = training_fns(config, offset)
    return train_on_repeats(config, ctx, batch_fn=batch_fn, loss_fn=loss_fn, initial_state=initial), offset


def checkpoint_models(config: DropoutRouteConfig, result: RunResult):
    """(step, model) for every checkpoint, the model as the store would keep its weights (half precision)."""
    for step in config.checkpoint_steps():
        yield step, load_toy_transformer(config.model_config(), as_stored(result.checkpoints[checkpoint_name(step)]))


def scored_tables(config: DropoutRouteConfig, result: RunResult, offset: int) -> dict[str, pd.DataFrame]:
    """The training curves, every head's scores at every checkpoint, and the final model's ambiguity tables."""
    probes = score_tokens(config)
    scores = [head_scores_table(model, probes, config.score_half).assign(step=offset + step)
              for step, model in checkpoint_models(config, result)]
    final = result.checkpoints[checkpoint_name(config.steps)]
    return {"steps": result.tables["steps"].assign(step=lambda d: d.step + offset),
            "evals": result.tables["evals"].assign(step=lambda d: d.step + offset),
            "scores": pd.concat(scores, ignore_index=True),
            **ambiguity_tables(config, load_toy_transformer(config.model_config(), as_stored(final)))}


def run(config: DropoutRouteConfig, ctx: RunContext) -> RunResult:
    result, offset = train_with_dropout(config, ctx)
    return RunResult(tables=scored_tables(config, result, offset), summary={**result.summary, "start_step": offset},
                     seed=config.seed)


def _configs(steps: int, continued_steps: int, start_scale: str, **common) -> dict[str, DropoutRouteConfig]:
    fresh = DropoutRouteConfig(steps=steps, start_scale=start_scale, **common)
    return {"pattern-s0": replace(fresh, dropout_at="pattern"),
            "output-s0": replace(fresh, dropout_at="output"),
            "plain-then-dropout-s0": replace(fresh, steps=continued_steps, start_from="three_layer-s0")}


register(Experiment(
    name="dropout_route",
    title="Which dropout keeps induction heads away: its place, and the objective or the path",
    track="Attention & circuits",
    page="experiments/attention-depth.qmd",
    version=1,
    config_type=DropoutRouteConfig,
    scales={"smoke": _configs(steps=40, continued_steps=40, start_scale="smoke", eval_every=20, eval_batch=32,
                              score_batch=8, checkpoint_every=20),
            "cpu": _configs(steps=4000, continued_steps=3000, start_scale="cpu", checkpoint_every=500)},
    run=run,
    description="attention_depth's 3-layer model (seed 0) trained with dropout on the attention probabilities only, "
                "on the attention outputs only, and (from the stored model without dropout) on both: head scores "
                "over training, and at the end the loss by region and where each head looks on ambiguous targets.",
))
