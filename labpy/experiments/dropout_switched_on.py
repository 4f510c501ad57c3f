"""The stored 3-layer models of `attention_depth` with dropout switched on, as in training.

Does the induction circuit of the models trained without dropout still copy better than the dropout models' route
under the noise it would have trained with, and which of dropout's two places costs it more? Each model's loss by
region on the attention-depth page's shared batch, with dropout at neither place, on the attention probabilities,
on the attention outputs and at both, the mean over `draws` mask draws. Stored rather than computed on the page:
dropout on the probabilities takes the model off its fused attention, and the page's 128 forward passes would add
half a minute to its kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..interp.ambiguity import region_losses, region_masks
from ..models.toy import load_toy_transformer
from ..store import RunResult
from ..train import step_generator
from ..validation import check_ranges, number_between, one_of
from .attention_depth import DROPOUT_PLACES, DROPOUT_SEED, dropout_hooks
from .induction import fixed_eval_batch, next_token_losses
from .registry import SCALES, Experiment, RunContext, register, results

# where dropout is switched on: the attention probabilities, the attention layers' outputs, both, or neither
SETTINGS = {"none": (), "probabilities": DROPOUT_PLACES["pattern"], "outputs": DROPOUT_PLACES["output"],
            "both": DROPOUT_PLACES["both"]}


@dataclass(frozen=True)
class SwitchedOnConfig:
    models: tuple[str, ...] = ("three_layer-s0", "three_layer-s1", "three_layer-dropout-long-s0",
                               "three_layer-dropout-long-s1")   # `attention_depth` labels
    depth_scale: str = "cpu"
    dropout: float = 0.1        # GPT-2's, as the dropout models trained with
    draws: int = 8              # mask draws averaged per setting
    batch: int = 256            # sequences of the page's shared batch

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("draws", "batch"),
                     rules={"dropout": number_between(0, 1, high_open=True), "depth_scale": one_of(*SCALES)})


@torch.no_grad()
def losses_under_dropout(model, batch, masks: dict[str, torch.Tensor], p: float, sites: tuple[str, ...],
                         draws: int, seed: int = 0) -> dict[str, float]:
    """`model`'s mean loss per region of `batch` with dropout at `sites` switched on, as in training: the mean over
    `draws` independent masks of each region's mean loss (nats). With p = 0 or no sites, the clean loss."""
    if p == 0 or not sites:
        return region_losses(next_token_losses(model, batch.tokens), masks)
    generator = step_generator(DROPOUT_SEED + 1_000 + seed, 0)    # masks drawn in no training run
    totals: dict[str, float] = {}
    for _ in range(draws):
        with model.hooks(fwd_hooks=dropout_hooks(model, p, generator, sites)):
            losses = region_losses(next_token_losses(model, batch.tokens), masks)   # (B, T-1) -> region: loss
        for region, loss in losses.items():
            totals[region] = totals.get(region, 0.0) + loss / draws
    return totals


def run(config: SwitchedOnConfig, ctx: RunContext) -> RunResult:
    depth = results("attention_depth", config.depth_scale)    # `lab run` / tests train missing smoke runs first
    batch = fixed_eval_batch(depth[config.models[0]].config, config.batch)
    masks = region_masks(batch)
    rows = []
    for label in config.models:
        entry = depth[label]
        model = load_toy_transformer(entry.config.model_config(), entry.step_checkpoint(max(entry.checkpoint_steps())))
        for setting, sites in SETTINGS.items():
            losses = losses_under_dropout(model, batch, masks, config.dropout, sites, config.draws)
            rows += [{"model": label, "dropout on": setting, "region": region, "loss": loss}
                     for region, loss in losses.items()]
    return RunResult(tables={"losses": pd.DataFrame(rows)}, summary={"models": len(config.models)})


register(Experiment(
    name="dropout_switched_on",
    title="The 3-layer models with dropout switched on, as in training",
    track="Attention & circuits",
    page="experiments/attention-depth.qmd",
    version=1,
    config_type=SwitchedOnConfig,
    scales={"smoke": {"models": SwitchedOnConfig(depth_scale="smoke", draws=2, batch=32)},
            "cpu": {"models": SwitchedOnConfig()}},
    run=run,
    description="attention_depth's 3-layer models without dropout and with dropout trained longer: the loss by region "
                "with dropout on the attention probabilities, on the attention outputs, at both places or neither.",
))
