"""Why the lab LM's gradients grow late in training: the lab LM trained again without its LR decay, or without
its weight decay.

The optimizer-state page found the median weight matrix's gradient RMS more than doubling through the second half
of training while the loss fell. Three suspects: the cosine schedule's falling learning rate (a smaller step lets
the weights settle where the loss is sharper, and a sharper surface gives larger gradients), AdamW's weight decay
(smaller weights, larger gradients, where a layer's output is normalised afterwards) and the loss surface itself.
This experiment removes one suspect per run, everything else equal (corpus, batches, initialisation, warm-up,
β's), and records the same per-tensor statistics as the lab LM; the stored `lab_lm` run is the side with both.
Only the weight matrices' (clipped) gradient and weight RMS and SNR are kept, and the unclipped total gradient norm
at every tenth step, which is all the question needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd

from ..models.lab_lm import MATRIX_KINDS, lm_loss, mean_loss, parameter_kind
from ..store import RunResult
from ..train import train
from ..validation import check_ranges, one_of
from .lab_lm import SMOKE, LabLMConfig, retraining, train_batches, train_spec
from .registry import Experiment, RunContext, register

KEPT_COLUMNS = ["step", "name", "weight_rms", "grad_rms", "snr"]


@dataclass(frozen=True)
class GradientGrowthConfig:
    schedule: str = "cosine"               # the LR after warm-up ("constant": no decay); the lab LM's is cosine
    weight_decay: float = 0.1              # AdamW's decoupled decay; the lab LM's is 0.1
    smoke: bool = False                    # the smoke lab LM's shape and schedule instead of the cpu one

    def __post_init__(self) -> None:
        check_ranges(self, nonneg=("weight_decay",), rules={"schedule": one_of("constant", "cosine")})

    def lab_lm(self) -> LabLMConfig:
        """The lab LM's own config with this run's schedule and weight decay."""
        return dataclasses.replace(SMOKE if self.smoke else LabLMConfig(), schedule=self.schedule,
                                   weight_decay=self.weight_decay)


def matrix_stats(param_stats: pd.DataFrame) -> pd.DataFrame:
    """The per-tensor statistics of the weight matrices only (embedding, attention and MLP projections), in the
    columns the question needs: a seventh of the full table's size."""
    kinds = param_stats.name.map(lambda name: parameter_kind(name)[1])
    return param_stats.loc[kinds.isin(MATRIX_KINDS), KEPT_COLUMNS].reset_index(drop=True)


def run(config: GradientGrowthConfig, ctx: RunContext) -> RunResult:
    lab = config.lab_lm()
    again = retraining(lab)
    val = again.val
    log = train(again.model, train_batches(lab, again.corpus), lm_loss, train_spec(lab),
                eval_fn=lambda m: {"val_loss": mean_loss(m, val)}, work_dir=ctx.work_dir, progress=ctx.progress,
                desc=f"gradient_growth {ctx.label}", param_stats=True, device=again.device)
    summary = {"schedule": lab.schedule, "weight_decay": lab.weight_decay,
               "final_val_loss": float(log.evals.val_loss.iloc[-1])}
    every_tenth = log.steps[log.steps.step % 10 == 0]     # the unclipped total gradient norm, thinned for the store
    return RunResult(tables={"evals": log.evals[["step", "val_loss"]], "steps": every_tenth,
                             "matrix_stats": matrix_stats(log.param_stats)}, summary=summary, seed=lab.seed)


register(Experiment(
    name="gradient_growth",
    title="Why late gradients grow: the lab LM without LR decay, or without weight decay",
    track="Training dynamics",
    page="experiments/optimizer-state.qmd",
    version=1,
    config_type=GradientGrowthConfig,
    scales={"smoke": {"constant-lr": GradientGrowthConfig(schedule="constant", smoke=True),
                      "no-weight-decay": GradientGrowthConfig(weight_decay=0.0, smoke=True)},
            "cpu": {"constant-lr": GradientGrowthConfig(schedule="constant"),
                    "no-weight-decay": GradientGrowthConfig(weight_decay=0.0)}},
    run=run,
    description="The lab LM retrained with a constant LR after warm-up, or without weight decay, all else equal; the "
                "weight matrices' gradient and weight RMS at every eval.",
))
