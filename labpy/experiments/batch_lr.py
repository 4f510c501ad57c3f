"""Batch size × learning rate for LoRA fine-tuning, and the gradient noise scale that explains the grid.

Run (`grid` configs, one per batch size): LoRA rank 8 on stdlib source code at every LR of a grid and
several seeds, each run seeing the same number of training *examples* (so a batch twice as large takes half
as many steps) — the setting in which the linear scaling rule (Goyal et al. 2017) claims that multiplying the
batch by k and the LR by k gives the same result. Stored: one row per (LR, seed) and thinned eval curves.

Run (`noise` config): the gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018) of the LoRA
parameters, from per-example gradients at the base model and at checkpoints along a batch-8 run.
B_simple is the batch size at which the gradient's noise and its signal are equal: far below it, a larger
batch is as good as more steps (so the LR should grow with it); far above it, extra examples per step buy
little.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import pandas as pd
import torch

from ..device import model_device
from ..finetune import finetune, lm_loss, load_base, make_trainable
from ..store import RunResult
from ..tasks.corpus import lm_batch_fn
from ..tasks.source_code import finetune_data
from ..train import TrainSpec
from ..validation import check_ranges, int_at_least, one_of
from .registry import Experiment, RunContext, register

BATCH_SIZES = (4, 8, 16, 32)
LRS = (2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2)   # factor 2 apart; a pilot put batch 8's best near 5e-3


@dataclass(frozen=True)
class BatchLRConfig:
    kind: str = "grid"              # "grid": an LR × seed sweep at one batch size; "noise": noise scale
    base: str = "lab-lm:cpu"
    rank: int = 8
    batch_size: int = 8
    lrs: tuple[float, ...] = LRS    # "noise": the first is the LR of the run along which it is measured
    seeds: tuple[int, ...] = (0, 1)
    examples: int = 512             # training sequences per run, equal for every batch size
    seq_len: int = 64
    warmup_fraction: float = 0.05
    eval_points: int = 4            # evals per run besides step 0
    eval_windows: int = 48
    source_chars: int = 400_000
    noise_steps: tuple[int, ...] = (0, 16, 32, 64)         # "noise": checkpoints where it is measured
    noise_examples: int = 128                              # "noise": per-example gradients per measurement

    def __post_init__(self) -> None:
        check_ranges(self, nonneg_int=("rank", "seeds", "noise_steps"), positive=("lrs",),
                     probability=("warmup_fraction",),
                     positive_int=("batch_size", "examples", "seq_len", "eval_points", "eval_windows", "source_chars"),
                     nonempty=("lrs", "seeds", "noise_steps"),
                     rules={"kind": one_of("grid", "noise"), "noise_examples": int_at_least(2)})


# ---- the gradient noise scale ----

def noise_scale_from_samples(grads: torch.Tensor) -> dict[str, float]:
    """B_simple from per-example gradients (n, P), n >= 2, with unbiased estimates of both parts:

    tr(Σ) = Σ_i |g_i − ḡ|² / (n − 1)   (Σ: covariance of one example's gradient)
    |G|²  = |ḡ|² − tr(Σ) / n           (E|ḡ|² = |G|² + tr(Σ)/n)
    """
    n = grads.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 per-example gradients, got {n}")
    g = grads.double()
    mean = g.mean(0)                                                     # (P,)
    trace = float(((g - mean) ** 2).sum() / (n - 1))
    g2 = float(mean.pow(2).sum()) - trace / n
    return {"trace_sigma": trace, "g2": g2, "b_simple": trace / g2 if g2 > 0 else math.inf, "n": n}


def noise_scale_from_batches(b_small: int, g2_small: float, b_big: int, g2_big: float) -> dict[str, float]:
    """McCandlish et al. (2018, appendix A): from mean squared gradient norms measured at two batch sizes,
    E|G_B|² = |G|² + tr(Σ)/B gives |G|² and tr(Σ), hence B_simple."""
    if b_small >= b_big:
        raise ValueError(f"need b_small < b_big, got {b_small} and {b_big}")
    g2 = (b_big * g2_big - b_small * g2_small) / (b_big - b_small)
    trace = (g2_small - g2_big) / (1 / b_small - 1 / b_big)
    return {"trace_sigma": trace, "g2": g2, "b_simple": trace / g2 if g2 > 0 else math.inf}


def mean_batch_grad_sq(grads: torch.Tensor, batch: int) -> float:
    """Mean |G_B|² over disjoint batches of `batch` per-example gradients (rows in order)."""
    n = grads.shape[0] // batch * batch
    means = grads[:n].double().view(-1, batch, grads.shape[1]).mean(1)   # (n / batch, P)
    return float(means.pow(2).sum(1).mean())


def per_example_grads(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Gradient of each window's mean loss w.r.t. the trainable parameters, flattened: (n, P)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for window in windows:                                               # (T+1,)
        grads = torch.autograd.grad(lm_loss(model, window[None]), params, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                               for g, p in zip(grads, params)]))
    return torch.stack(rows)                                             # (n, P)


def jackknife_b_simple(grads: torch.Tensor) -> float:
    """Leave-one-out (jackknife) standard error of B_simple, in closed form from sums over examples.

    (A bootstrap would resample examples with repeats, which biases the tr(Σ) estimate downwards.)
    """
    g = grads.double()
    n = g.shape[0]
    if n < 3:
        return math.nan
    total, sq = g.sum(0), g.pow(2).sum(1)                                # (P,), (n,)
    m = n - 1
    mean_sq = (total.pow(2).sum() - 2 * (g @ total) + sq) / m**2         # |mean without i|², (n,)
    trace = (sq.sum() - sq - m * mean_sq) / (m - 1)                      # tr(Σ) without i, (n,)
    b = trace / (mean_sq - trace / m)                                    # (n,)
    return float(((m / n) * (b - b.mean()).pow(2).sum()).sqrt())


def measure_noise(model: torch.nn.Module, windows: torch.Tensor) -> dict[str, float]:
    """B_simple at the model's current weights, its jackknife error, and the two-batch-size estimate."""
    grads = per_example_grads(model, windows.to(model_device(model)))
    out = noise_scale_from_samples(grads)
    b_big = max(2, grads.shape[0] // 4)
    two = noise_scale_from_batches(1, mean_batch_grad_sq(grads, 1), b_big, mean_batch_grad_sq(grads, b_big))
    return {**out, "b_simple_se": jackknife_b_simple(grads), "b_simple_two_batch": two["b_simple"],
            "two_batch_big": b_big, "grad_norm_mean": float(grads.norm(dim=1).mean())}


# ---- runs ----

def _steps(config: BatchLRConfig) -> int:
    return max(1, config.examples // config.batch_size)


def run_grid(config: BatchLRConfig, ctx: RunContext) -> RunResult:
    base, tokenizer = load_base(config.base)
    data = finetune_data(tokenizer, config.seq_len, config.eval_windows, config.source_chars)
    steps = _steps(config)
    rows, curves = [], []
    for lr in config.lrs:
        for seed in config.seeds:
            model = make_trainable(copy.deepcopy(base), config.rank, seed=seed)
            spec = TrainSpec(steps=steps, lr=lr, warmup_steps=max(1, round(config.warmup_fraction * steps)),
                             eval_every=max(1, steps // config.eval_points), seed=seed, resume_every=10**9)
            batch_fn = lm_batch_fn(data.source_train, config.batch_size, config.seq_len, seed)
            try:
                log = finetune(model, batch_fn, spec, data.eval_sets, progress=ctx.progress,
                               desc=f"batch {config.batch_size} lr {lr:g} seed {seed}")
            except FloatingPointError:
                rows.append({"batch_size": config.batch_size, "lr": lr, "seed": seed, "steps": steps,
                             "diverged": True})
                continue
            last = log.evals.iloc[-1]
            tail = log.steps.loss.iloc[-max(1, steps // 10):]
            rows.append({"batch_size": config.batch_size, "lr": lr, "seed": seed, "steps": steps, "diverged": False,
                         "base_source": float(log.evals.loss_source.iloc[0]), "final_source": float(last.loss_source),
                         "final_pydoc": float(last.loss_pydoc), "train_loss_tail": float(tail.mean()),
                         "grad_norm_median": float(log.steps.grad_norm.median())})
            curves.append(log.evals[["step", "loss_source", "loss_pydoc"]].assign(lr=lr, seed=seed))
    grid = pd.DataFrame(rows)
    summary = {"steps": steps, "examples": config.examples, "tokens_per_run": config.examples * config.seq_len,
               **data.info}
    return RunResult(tables={"grid": grid, "curves": pd.concat(curves, ignore_index=True)}, summary=summary,
                     seed=config.seeds[0])


def run_noise(config: BatchLRConfig, ctx: RunContext) -> RunResult:
    base, tokenizer = load_base(config.base)
    data = finetune_data(tokenizer, config.seq_len, config.eval_windows, config.source_chars)
    seed = config.seeds[0]
    model = make_trainable(base, config.rank, seed=seed)
    steps = max(config.noise_steps)
    spec = TrainSpec(steps=max(1, steps), lr=config.lrs[0], warmup_steps=max(1, round(config.warmup_fraction * steps)),
                     eval_every=max(1, steps // config.eval_points), seed=seed, resume_every=10**9,
                     checkpoint_steps=tuple(config.noise_steps))
    batch_fn = lm_batch_fn(data.source_train, config.batch_size, config.seq_len, seed)
    log = finetune(model, batch_fn, spec, data.eval_sets, progress=ctx.progress, desc="noise-scale run")
    sample_fn = lm_batch_fn(data.source_train, config.noise_examples, config.seq_len, seed + 104_729)
    rows = []
    for step in config.noise_steps:
        model.load_state_dict(log.checkpoints[step])
        loss = log.evals.set_index("step").loss_source.get(step, float("nan"))
        rows.append({"step": step, "examples_seen": step * config.batch_size, "heldout_source": loss,
                     **measure_noise(model, sample_fn(step))})
    return RunResult(tables={"noise": pd.DataFrame(rows), "evals": log.evals, "steps": log.steps},
                     summary={"trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                              "lr": config.lrs[0], **data.info}, seed=seed)


def run(config: BatchLRConfig, ctx: RunContext) -> RunResult:
    if config.kind == "grid":
        return run_grid(config, ctx)
    if config.kind == "noise":
        return run_noise(config, ctx)
    raise ValueError(f"unknown kind {config.kind!r}; valid choices: grid, noise")


CPU = BatchLRConfig()
SMOKE = BatchLRConfig(base="lab-lm:smoke", lrs=(1e-3, 4e-3), seeds=(0,), examples=32, seq_len=32, eval_windows=8,
                      source_chars=60_000, noise_steps=(0, 4), noise_examples=8)


def scale_configs(base: BatchLRConfig, batch_sizes=BATCH_SIZES, noise_lr: float = 4e-3) -> dict[str, BatchLRConfig]:
    configs = {f"b{b}": dataclasses.replace(base, batch_size=b) for b in batch_sizes}
    configs["noise"] = dataclasses.replace(base, kind="noise", batch_size=8, lrs=(noise_lr,))
    return configs


register(Experiment(
    name="batch_lr",
    title="Batch size × learning rate for LoRA fine-tuning, and the gradient noise scale",
    track="Fine-tuning",
    page="experiments/batch-size.qmd",
    version=1,
    config_type=BatchLRConfig,
    scales={"smoke": scale_configs(SMOKE, batch_sizes=(4, 8), noise_lr=4e-3), "cpu": scale_configs(CPU)},
    run=run,
    description="LR grid at batch 4-32 with equal examples seen; B_simple from per-example gradients.",
))
