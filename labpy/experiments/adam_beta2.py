"""Adam's β₂: the lab LM trained again with a shorter second-moment memory.

The lab LM trains with AdamW's default β₂ = 0.999, whose second moment v̂ averages squared gradients over about
1/(1 − β₂) = 1,000 steps, two thirds of the whole run. The optimizer-state page found the attention and MLP
matrices' SNR |m̂|/√v̂ dipping far below the pure-noise floor early on, a sign that v̂ remembers larger gradients than
the current ones. LLM recipes often use β₂ = 0.95 (a memory of 20 steps). This experiment trains the lab LM again
with only β₂ changed (same corpus, batches, initialisation, schedule and weight decay) and records the same
per-tensor Adam statistics (`train(..., param_stats=True)`); the stored `lab_lm` run is the β₂ = 0.999 side.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..models.lab_lm import lm_loss, mean_loss
from ..store import RunResult
from ..train import train
from ..validation import check_ranges, number_between
from .lab_lm import SMOKE, LabLMConfig, retraining, train_batches, train_spec
from .registry import Experiment, RunContext, register


@dataclass(frozen=True)
class AdamBeta2Config:
    beta2: float = 0.95                    # Adam's second-moment decay (the lab LM's own is 0.999)
    smoke: bool = False                    # the smoke lab LM's shape and schedule instead of the cpu one

    def __post_init__(self) -> None:
        check_ranges(self, rules={"beta2": number_between(0, 1, high_open=True)})

    def lab_lm(self) -> LabLMConfig:
        """The lab LM's own config: everything but β₂ is the stored model's."""
        return SMOKE if self.smoke else LabLMConfig()


def run(config: AdamBeta2Config, ctx: RunContext) -> RunResult:
    lab = config.lab_lm()
    again = retraining(lab)
    model, val = again.model, again.val
    spec = train_spec(lab)
    spec = dataclasses.replace(spec, betas=(spec.betas[0], config.beta2))
    log = train(model, train_batches(lab, again.corpus), lm_loss, spec,
                eval_fn=lambda m: {"val_loss": mean_loss(m, val)}, work_dir=ctx.work_dir, progress=ctx.progress,
                desc=f"adam_beta2 {ctx.label}", param_stats=True, device=again.device)
    summary = {"betas": list(spec.betas), "final_val_loss": float(log.evals.val_loss.iloc[-1]),
               "n_params": sum(p.numel() for p in model.parameters())}
    return RunResult(tables={"steps": log.steps, "evals": log.evals, "param_stats": log.param_stats},
                     summary=summary, seed=lab.seed)


register(Experiment(
    name="adam_beta2",
    title="Adam's β₂: the lab LM trained again with β₂ = 0.95",
    track="Training dynamics",
    page="experiments/optimizer-state.qmd",
    version=1,
    config_type=AdamBeta2Config,
    scales={"smoke": {"beta2-0.95": AdamBeta2Config(smoke=True)}, "cpu": {"beta2-0.95": AdamBeta2Config()}},
    run=run,
    description="The lab LM retrained with Adam's β₂ = 0.95 instead of 0.999, all else equal; per-tensor Adam "
                "statistics at every eval.",
))
