"""Why Adam's step at lr 0.1 is under a tenth of the rate: averaging, or memory?

`high_rate_weights` found that over steps 40–100 of the sweep's lr 0.1 runs Adam's step per weight, the RMS of
m̂ / (√v̂ + ε), is under a tenth of the rate, where a steady gradient would make it about 1. That ratio is, roughly, a
product of two factors, measured here per weight matrix at every step of a window:

- **carry**, RMS(m̂) / RMS(g): how much of the gradient survives β₁'s averaging. For gradients of random sign from
  step to step it is about √((1 − β₁)/(1 + β₁)) = 0.23 (β₁ = 0.9); for a gradient that flips sign every step, less;
  for a steady one, 1.
- **fresh**, RMS(g) / √mean(v̂): the gradient now against the scale Adam remembers. With β₂ = 0.999, v̂ at step 100
  is close to the plain mean of every g² since step 1, so gradients smaller now than earlier make it small.

Beside them: the cosine between each matrix's gradient and its gradient one step earlier, and the share of entries
whose sign flips. g is the gradient Adam used (after the global norm clip, whose share of clipped steps is kept).
The sweep's lr 0.1 run (decay 0.1) is watched beside its lr 1e-2 run as a yardstick; same model, corpus, seeds and
schedule as `lr_sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..device import lab_device
from ..models.lab_lm import lm_loss, mean_loss
from ..store import RunResult
from ..tasks.corpus import lm_batch_fn
from ..train import StatsContext, adam_eps, adam_moments, train
from ..validation import check_ranges, require
from .high_rate_weights import HIGH_LR, YARDSTICK_LR, group_of
from .lr_sweep import SMOKE, SweepConfig
from .registry import Experiment, RunContext, register


@dataclass(frozen=True)
class AdamAnatomyConfig(SweepConfig):
    window_start: int = 39            # measured at every step from here to window_end (the first has no lag)
    window_end: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive_int=("window_start", "window_end"))
        require(self, self.window_start < self.window_end <= self.steps, "window_end",
                f"is out of range; it must be above window_start = {self.window_start} and at most steps = "
                f"{self.steps}")


def anatomy(previous: dict[str, torch.Tensor]):
    """A `stats_fn` for `labpy.train`: per group (matrices, embedding), the mean over its tensors of write, carry,
    fresh, the cosine with the previous step's gradient and the share of entries whose gradient flips sign.
    `previous` holds the gradients of the last measured step (measure consecutive steps for the lag to be one)."""

    def stats(ctx: StatsContext) -> list[dict]:
        eps, per_group, now = adam_eps(ctx.optimizer), {}, {}
        for p in ctx.model.parameters():
            name = ctx.names[id(p)]
            group = group_of(name)
            moments = adam_moments(ctx.optimizer, p)
            if group is None or moments is None or p.grad is None:
                continue
            m_hat, v_hat = moments
            g = p.grad.detach()
            now[name] = g.clone()
            g_rms = float(g.pow(2).mean().sqrt())
            row = {"write": float((m_hat / (v_hat.sqrt() + eps)).pow(2).mean().sqrt()),
                   "carry": float(m_hat.pow(2).mean().sqrt()) / max(g_rms, 1e-30),
                   "fresh": g_rms / max(float(v_hat.mean().sqrt()), 1e-30),
                   "lag_cosine": float("nan"), "sign_flips": float("nan")}
            before = previous.get(name)
            if before is not None:
                row["lag_cosine"] = float(torch.nn.functional.cosine_similarity(g.flatten(), before.flatten(), dim=0))
                both = (g != 0) & (before != 0)
                row["sign_flips"] = float(((g > 0) != (before > 0))[both].float().mean())
            per_group.setdefault(group, []).append(row)
        previous.clear()
        previous.update(now)
        return [{"group": grp, "lr": ctx.lr, **pd.DataFrame(rows).mean().to_dict()} for grp, rows in per_group.items()]
    return stats


def watch(config: AdamAnatomyConfig, ctx: RunContext, name: str, heldout: bool = False,
          **spec_changes) -> RunResult:
    """Train each seed with `anatomy` measuring every step of the window; `spec_changes` change the sweep's training
    spec (e.g. Adam's betas); `heldout` adds the held-out loss at each measured step and at the end."""
    device = lab_device()
    train_ids, val = config.data(device)
    window = tuple(range(config.window_start, config.window_end + 1))
    eval_fn = (lambda m: {"val_loss": mean_loss(m, val)}) if heldout else None
    rows, clipping = [], []
    for seed in config.seeds:
        model = config.build_model(seed)
        previous: dict[str, torch.Tensor] = {}
        spec = config.train_spec(seed, measure_steps=window, eval_every=config.steps, **spec_changes)
        log = train(model, lm_batch_fn(train_ids, config.batch_size, config.seq_len, seed), lm_loss, spec,
                    eval_fn=eval_fn, stats_fn=anatomy(previous), progress=ctx.progress,
                    desc=f"{name} {ctx.label} seed {seed}", device=device)
        stats = log.custom_stats[log.custom_stats.step.isin(window)]
        if heldout:
            stats = stats.merge(log.evals[["step", "val_loss"]], on="step", how="left")
        rows.append(stats.assign(seed=seed))
        steps = log.steps[log.steps.step.isin(window)]
        clip = spec.grad_clip if spec.grad_clip is not None else float("inf")
        clipping.append({"seed": seed, "clipped_share": float((steps.grad_norm > clip).mean()),
                         "median_grad_norm": float(steps.grad_norm.median()),
                         "final_loss": float(log.steps.loss.iloc[-1]),
                         **({"final_val_loss": float(log.evals.val_loss.iloc[-1])} if heldout else {})})
    summary = {"lr": config.lr, "weight_decay": config.weight_decay, "betas": list(spec.betas),
               "grad_clip": spec.grad_clip}
    return RunResult(tables={"anatomy": pd.concat(rows, ignore_index=True), "seeds": pd.DataFrame(clipping)},
                     summary=summary, seed=config.seeds[0])


def run(config: AdamAnatomyConfig, ctx: RunContext) -> RunResult:
    return watch(config, ctx, "adam_step_anatomy")


register(Experiment(
    name="adam_step_anatomy",
    title="Why Adam's step is small at a high learning rate: the gradient's averaging and Adam's memory",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=AdamAnatomyConfig,
    scales={"smoke": {"lr-0.1": AdamAnatomyConfig(lr=HIGH_LR, **SMOKE, window_start=2, window_end=6)},
            "cpu": {"lr-0.1": AdamAnatomyConfig(lr=HIGH_LR), "yardstick": AdamAnatomyConfig(lr=YARDSTICK_LR)}},
    run=run,
    description="The sweep's lr 0.1 run and its lr 1e-2 run, measured at every step from 39 to 100: Adam's step per "
                "weight split into how much of the gradient its averaging keeps and how the gradient compares with "
                "the scale Adam remembers, and how often the gradient flips sign.",
))
