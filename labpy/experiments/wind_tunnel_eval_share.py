"""How much of a wind-tunnel run is evaluation rather than training steps?

A `wind_tunnels` run evaluates every `eval_every` steps (the model's errors against the exact posterior on 500
sequences), once more at the end on 2,000, and for the HMM transformer on four longer lengths besides. Their share
of the run's wall time was never measured. This experiment times, in one process and side by side, a stretch of
training steps and repeated evaluations of each seed-0 `cpu` wind-tunnel config with the code as it is now, and
projects a whole run from them: steps × time per step against evaluations × time per evaluation plus the final
ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import pandas as pd
import torch

from ..device import lab_device, to_device
from ..store import RunResult
from ..train import TrainSpec, step_generator, train
from ..validation import check_ranges
from .registry import Experiment, RunContext, get_experiment, register
from .wind_tunnels import (WindTunnelConfig, build_model, eval_batch, length_generalization, loss_on, make_batch,
                           position_errors)


@dataclass(frozen=True)
class EvalShareConfig:
    wind_tunnel_scale: str = "cpu"   # whose seed-0 configs are timed
    timed_steps: int = 60            # training steps timed per config
    eval_repeats: int = 3            # periodic evaluations timed per config (their mean is used)

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("timed_steps", "eval_repeats"))


def evaluations(config: WindTunnelConfig) -> int:
    """How many periodic evaluations `train` runs: one before the first step, every `eval_every`, and the last."""
    return 1 + config.steps // config.eval_every + (config.steps % config.eval_every != 0)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_one(label: str, config: WindTunnelConfig, share: EvalShareConfig) -> dict:
    """Seconds per training step, per periodic evaluation and for the final evaluations of one config."""
    device = lab_device()
    model = build_model(config)
    small_eval = to_device(eval_batch(config, 500), device)
    spec = TrainSpec(steps=share.timed_steps, lr=config.lr, warmup_steps=min(config.warmup_steps, share.timed_steps),
                     schedule="cosine", weight_decay=config.weight_decay, eval_every=share.timed_steps,
                     seed=config.seed)
    train_s = timed(lambda: train(model, lambda step: make_batch(config, config.batch_size,
                                                                 step_generator(config.seed, step)),
                                  lambda m, b: loss_on(config, m, b), spec, progress=False, device=device))
    model.eval()
    with torch.no_grad():
        eval_s = [timed(lambda: position_errors(model, small_eval)) for _ in range(share.eval_repeats)]
        final_s = timed(lambda: position_errors(model, eval_batch(config)))
        lengths_s = (timed(lambda: length_generalization(config, model))
                     if config.task == "hmm" and config.model == "transformer" else 0.0)
    step_s, periodic_s = train_s / share.timed_steps, sum(eval_s) / len(eval_s)
    n_evals = evaluations(config)
    steps_total, evals_total = config.steps * step_s, n_evals * periodic_s + final_s + lengths_s
    return {"run": label, "steps": config.steps, "evaluations": n_evals, "step_s": step_s, "eval_s": periodic_s,
            "final_eval_s": final_s, "lengths_eval_s": lengths_s, "projected_steps_s": steps_total,
            "projected_eval_s": evals_total, "eval_share": evals_total / (steps_total + evals_total)}


def run(config: EvalShareConfig, ctx: RunContext) -> RunResult:
    configs = get_experiment("wind_tunnels").configs(config.wind_tunnel_scale)
    rows = [time_one(label, wt, config) for label, wt in configs.items() if label.endswith("-s0")]
    return RunResult(tables={"timings": pd.DataFrame(rows)}, summary={"timed_runs": len(rows)})


register(Experiment(
    name="wind_tunnel_eval_share",
    title="How much of a wind-tunnel run is evaluation: steps and evaluations timed side by side",
    track="The lab itself",
    page="experiments/gpu-check.qmd",
    version=1,
    config_type=EvalShareConfig,
    scales={"smoke": {"smoke": EvalShareConfig(wind_tunnel_scale="smoke", timed_steps=4, eval_repeats=1)},
            "cpu": {"cpu": EvalShareConfig()}},
    run=run,
    description="Per seed-0 cpu wind-tunnel config: seconds per training step and per evaluation, measured side by "
                "side, and the evaluations' projected share of a whole run.",
))
