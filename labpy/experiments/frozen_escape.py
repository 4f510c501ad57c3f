"""Is a model frozen by too high a learning rate stuck for good?

The learning-rate sweep found every run from lr 0.1 up ending near the unigram line: it learns token frequencies in
a few steps and then, at those rates, learns nothing more, without diverging. Its 200-step cosine schedule reaches
low rates only in the last few dozen steps. This experiment takes the sweep's small model and corpus and asks what
a lower rate does afterwards, three ways per seed, everything else as in the sweep:

- **frozen, then lowered**: the sweep's lr 0.1 run step for step (200 steps, warm-up, cosine), then `extra_steps`
  more at `low_lr` with a fresh AdamW (warm-up, cosine): a restart at a sane rate;
- **fresh at the low rate**: a new model given the same second phase, the same batches — the control;
- **a longer cosine from the high rate**: one schedule from 0.1 over all 200 + `extra_steps` steps, so that its
  tail, where the rate is low, lasts longer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pandas as pd

from ..device import lab_device
from ..models.lab_lm import build_lab_lm, lm_loss, mean_loss
from ..store import RunResult
from ..tasks.corpus import lm_batch_fn
from ..train import TrainSpec, train
from ..validation import check_ranges
from .lr_sweep import SMOKE, SweepConfig
from .registry import Experiment, RunContext, register

PHASE_TWO_SEED = 1000         # the second phase's batches: new windows, the same for both arms that have one


@dataclass(frozen=True)
class EscapeConfig:
    high_lr: float = 0.1                     # the lowest rate at which every sweep run froze
    low_lr: float = 5e-3                     # near the sweep's best rate
    extra_steps: int = 800
    low_warmup_steps: int = 20
    seeds: tuple[int, ...] = (0, 1, 2)
    smoke: bool = False                      # the sweep's smoke model and corpus instead of its cpu ones

    def __post_init__(self) -> None:
        check_ranges(self, positive=("high_lr", "low_lr"), positive_int=("extra_steps",),
                     nonneg_int=("low_warmup_steps", "seeds"), nonempty=("seeds",))

    def sweep(self) -> SweepConfig:
        """The sweep's config at the high rate: the frozen run this experiment starts from."""
        return SweepConfig(**{**(SMOKE if self.smoke else {}), "lr": self.high_lr, "seeds": self.seeds})


def spec(sweep: SweepConfig, lr: float, steps: int, warmup: int, seed: int) -> TrainSpec:
    """The sweep's training spec with another rate, length and warm-up."""
    return sweep.train_spec(seed, lr=lr, steps=steps, warmup_steps=warmup)


def run(config: EscapeConfig, ctx: RunContext) -> RunResult:
    sweep = config.sweep()
    device = lab_device()
    train_ids, val = sweep.data(device)                                                 # val (N, T+1)
    hf_config = sweep.hf_config()
    evaluate = lambda m: {"val_loss": mean_loss(m, val)}
    first_batches = lambda seed: lm_batch_fn(train_ids, sweep.batch_size, sweep.seq_len, seed)
    second_batches = lambda seed: lm_batch_fn(train_ids, sweep.batch_size, sweep.seq_len, PHASE_TWO_SEED + seed)
    evals = []

    def fit(model, batches, train_spec: TrainSpec, arm: str, seed: int, offset: int = 0) -> None:
        log = train(model, batches, lm_loss, train_spec, eval_fn=evaluate, progress=ctx.progress,
                    desc=f"frozen_escape {arm} seed {seed}", device=device)
        evals.append(log.evals[["step", "val_loss"]].assign(step=log.evals.step + offset, arm=arm, seed=seed))

    for seed in config.seeds:
        frozen = build_lab_lm(hf_config, seed)
        fit(frozen, first_batches(seed), spec(sweep, sweep.lr, sweep.steps, sweep.warmup_steps, seed),
            "frozen, then lowered", seed)
        fit(frozen, second_batches(seed), spec(sweep, config.low_lr, config.extra_steps, config.low_warmup_steps, seed),
            "frozen, then lowered", seed, offset=sweep.steps)
        fit(build_lab_lm(hf_config, seed), second_batches(seed),
            spec(sweep, config.low_lr, config.extra_steps, config.low_warmup_steps, seed), "fresh at the low rate",
            seed, offset=sweep.steps)
        fit(build_lab_lm(hf_config, seed), first_batches(seed),
            spec(sweep, sweep.lr, sweep.steps + config.extra_steps, sweep.warmup_steps, seed),
            "a longer cosine from the high rate", seed)
    curves = pd.concat(evals, ignore_index=True)
    # the frozen arm's second phase starts with an eval of the frozen model itself: keep the first phase's one
    curves = curves.drop_duplicates(["arm", "seed", "step"], keep="first").reset_index(drop=True)
    return RunResult(tables={"evals": curves},
                     summary={"uniform_loss": math.log(sweep.vocab_size), "sweep_steps": sweep.steps,
                              "sweep": dataclasses.asdict(sweep)},
                     seed=config.seeds[0])


register(Experiment(
    name="frozen_escape",
    title="Is a model frozen by too high a learning rate stuck for good?",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=EscapeConfig,
    scales={"smoke": {"lr-0.1": EscapeConfig(high_lr=5e-2, extra_steps=12, low_warmup_steps=2, seeds=(0,), smoke=True)},
            "cpu": {"lr-0.1": EscapeConfig()}},
    run=run,
    description="The sweep's frozen lr 0.1 run continued at 5e-3, against a fresh model given the same steps and a "
                "single longer cosine from 0.1; held-out loss every 50 steps, three seeds.",
))
