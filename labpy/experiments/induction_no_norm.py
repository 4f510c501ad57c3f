"""The induction task's 2-layer attention-only model without LayerNorm: two seeds of the `induction` recipe, and
seed 0 again with three times the steps or three times the rate.

Why: in the stored `induction` model a positional layer-0 head sets how sharp the predictions are at each
position through the final LayerNorm's divisor, and that divisor tracks where the repeat is likely
(papers/circuits-framework.qmd, "confidence by position"). Without any norm there is no divisor: does the model
still hedge by position, and how? Same task, steps, optimiser and data as `induction`; only the norms go (the
model's `normalization=None`: no LayerNorm before the attention layers or the unembedding). The recipe's runs
stalled short of induction, hence the two follow-ups: is it a stall or only slowness? They still stalled, hence a
third: RMSNorm in place of every LayerNorm, which keeps the divisor and drops the centring and the bias.
Checkpoints at the start and the end only, to keep the store small. The training curves are on
experiments/induction-heads.qmd; the analysis and the predictions on the paper page.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..models.toy import NORMALIZATIONS, ToyTransformerConfig
from ..store import RunResult
from ..validation import require
from .induction import SMOKE, InductionConfig, train_on_repeats
from .registry import Experiment, RunContext, register


@dataclass(frozen=True)
class NoNormInductionConfig(InductionConfig):
    normalization: str | None = None   # "LN" is the stored `induction` model; None drops every norm
    checkpoint_every: int = 6000       # the start and the end

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self, self.normalization in NORMALIZATIONS, "normalization", f"is not one of {NORMALIZATIONS}")

    def model_config(self) -> ToyTransformerConfig:
        return replace(super().model_config(), normalization=self.normalization)


def run(config: NoNormInductionConfig, ctx: RunContext) -> RunResult:
    return train_on_repeats(config, ctx)


SEEDS = (0, 1)
BASE = tuple(f"no_norm-s{seed}" for seed in SEEDS)    # the induction model's recipe, norms removed
# the follow-up to their stall, seed 0: three times the steps at the same rate, or three times the rate
LONG_STEPS, FAST_LR = 18_000, 3e-3
# the follow-up to both (added after S1 and S2 had been read), seed 0: RMSNorm in every norm's place, which keeps the
# divisor and drops the centring and the bias: is the divisor what the model needs?
RMS = "rms-s0"
LABELS = {**{key: f"no norm, seed {seed}" for key, seed in zip(BASE, SEEDS)},
          "no_norm-long-s0": f"no norm, {LONG_STEPS:,} steps", "no_norm-fast-s0": f"no norm, rate {FAST_LR:g}",
          RMS: "RMSNorm, seed 0"}


def _scale(**common) -> dict[str, NoNormInductionConfig]:
    configs = {key: NoNormInductionConfig(seed=seed, **common) for key, seed in zip(BASE, SEEDS)}
    steps = common.get("steps", InductionConfig.steps) * LONG_STEPS // InductionConfig.steps
    configs["no_norm-long-s0"] = replace(configs[BASE[0]], steps=steps, checkpoint_every=steps)
    configs["no_norm-fast-s0"] = replace(configs[BASE[0]], lr=FAST_LR)
    configs[RMS] = replace(configs[BASE[0]], normalization="RMS")
    return configs


register(Experiment(
    name="induction_no_norm",
    title="Induction heads without LayerNorm",
    track="Attention & circuits",
    page="experiments/induction-heads.qmd",
    version=1,
    config_type=NoNormInductionConfig,
    scales={
        "smoke": _scale(**SMOKE),
        "cpu": _scale(),
    },
    run=run,
    description="The induction task's 2-layer attention-only model with no LayerNorm: does it still set its "
                "confidence by position?",
))
