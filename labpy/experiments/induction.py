"""Induction heads: how a 2-layer attention-only transformer learns to copy (and why 1 layer cannot).

Run: train on random tokens with one repeated segment of random length (`labpy.tasks.repeated_tokens`),
evaluating loss on the first copy and on the repeat every `eval_every` steps and keeping checkpoints every
`checkpoint_every` steps. The pages' analysis (`induction_analysis.py`): head scores over training from the
checkpoints, the phase change in the repeat loss, and the ablation of the previous-token head.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..models.toy import ToyTransformerConfig, build_toy_transformer
from ..store import RunResult, checkpoint_name
from ..tasks.repeated_tokens import RepeatedSegmentTask, repeated_random_tokens, sample
from ..device import lab_device, to_device
from ..train import TrainSpec, step_generator, train
from ..validation import check_ranges, int_at_least, require
from .registry import Experiment, RunContext, register

EVAL_SEED = 1_000_000  # eval and scoring data never overlap training seeds
# the smoke preset every experiment on this task shares: a few steps, small eval and scoring batches
SMOKE = dict(steps=60, eval_every=20, checkpoint_every=30, eval_batch=32, score_batch=8)


@dataclass(frozen=True)
class InductionConfig:
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_head: int = 16
    vocab: int = 50
    seq_len: int = 64
    min_segment: int = 6
    max_segment: int = 24
    steps: int = 6000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    eval_every: int = 50
    eval_batch: int = 256
    checkpoint_every: int = 200
    score_half: int = 20   # L of the [r_1..r_L, r_1..r_L] probe used for head scores
    score_batch: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_layers", "d_model", "n_heads", "d_head", "steps", "batch_size",
                                         "eval_every", "eval_batch", "checkpoint_every", "score_batch"),
                     nonneg_int=("warmup_steps", "seed"), positive=("lr",), nonneg=("weight_decay",),
                     rules={"vocab": int_at_least(2), "seq_len": int_at_least(4), "min_segment": int_at_least(2),
                            "score_half": int_at_least(2)})
        require(self, self.min_segment <= self.max_segment, "max_segment",
                f"is out of range; it must be >= min_segment = {self.min_segment}")
        require(self, 2 * self.max_segment <= self.seq_len, "max_segment",
                f"is out of range; two copies must fit in seq_len = {self.seq_len}, so it must be <= {self.seq_len // 2}")
        require(self, 2 * self.score_half <= self.seq_len, "score_half",
                f"is out of range; the [r, r] probe must fit in seq_len = {self.seq_len}, so it must be <= "
                f"{self.seq_len // 2}")

    def model_config(self) -> ToyTransformerConfig:
        return ToyTransformerConfig(n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
                                    d_head=self.d_head, d_vocab=self.vocab, n_ctx=self.seq_len, attn_only=True)

    def task(self) -> RepeatedSegmentTask:
        return RepeatedSegmentTask(self.vocab, self.seq_len, self.min_segment, self.max_segment)

    def checkpoint_steps(self) -> tuple[int, ...]:
        return tuple(sorted({*range(0, self.steps + 1, self.checkpoint_every), self.steps}))

    def train_spec(self) -> TrainSpec:
        """AdamW at `lr` after a linear warm-up, constant afterwards; variants change the schedule here."""
        return TrainSpec(steps=self.steps, lr=self.lr, warmup_steps=self.warmup_steps,
                         weight_decay=self.weight_decay, eval_every=self.eval_every,
                         checkpoint_steps=self.checkpoint_steps(), seed=self.seed,
                         resume_every=min(500, max(20, self.steps // 5)))


def score_tokens(config: InductionConfig) -> torch.Tensor:
    """(score_batch, 2·score_half) [r, r] probes the head scores are read on, disjoint from training data."""
    return repeated_random_tokens(config.score_batch, config.score_half, config.vocab,
                                  step_generator(EVAL_SEED + 1, config.seed))


def next_token_losses(model, tokens: torch.Tensor) -> torch.Tensor:
    """Per-target loss (B, T-1): position t predicts token t+1."""
    logits = model(tokens)
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")


def fixed_eval_batch(config: InductionConfig, n: int = 256):
    """One fixed batch of the task (the evaluation stream of seed 0, whatever the model's seed): the attention-depth
    page measures every model on it, stored or being trained."""
    return sample(config.task(), n, step_generator(EVAL_SEED, 0))


def copy_losses(model, config: InductionConfig):
    """A function from forward hooks to `model`'s mean loss on the repeat and on the first copy of the task's
    evaluation sequences (nats)."""
    batch = sample(config.task(), config.eval_batch, step_generator(EVAL_SEED, config.seed))
    first, repeat = batch.target_masks()

    @torch.no_grad()
    def losses(hooks) -> tuple[float, float]:
        with model.hooks(fwd_hooks=list(hooks)):
            per_target = next_token_losses(model, batch.tokens)              # (B, T-1)
        return per_target[repeat].mean().item(), per_target[first].mean().item()

    return losses


def run(config: InductionConfig, ctx: RunContext) -> RunResult:
    return train_on_repeats(config, ctx)


def train_on_repeats(config: InductionConfig, ctx: RunContext,
                     batch_fn: Callable[[int], Any] | None = None,
                     loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
                     initial_state: Mapping[str, torch.Tensor] | None = None,
                     initial_optimizer_state: dict | None = None) -> RunResult:
    """Train an attention-only model on the repeated-segment task and store its curves and checkpoints; other
    experiments on the same data pass their own batches (`batch_fn(step)`) and loss (`loss_fn(model, batch)`),
    or start from a stored model's weights (`initial_state`) instead of the seed's initialisation, and from another
    run's AdamW moments (`initial_optimizer_state`) instead of zero."""
    task = config.task()
    device = lab_device()
    model = build_toy_transformer(config.model_config(), seed=config.seed)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    eval_batch = sample(task, config.eval_batch, step_generator(EVAL_SEED, config.seed))
    first_mask, repeat_mask = to_device(eval_batch.target_masks(), device)  # (B, T-1) each
    eval_tokens = eval_batch.tokens.to(device)                              # (B, T)

    def tokens_at(step: int) -> torch.Tensor:
        return sample(task, config.batch_size, step_generator(config.seed, step)).tokens

    def mean_loss(model, tokens: torch.Tensor) -> torch.Tensor:
        return next_token_losses(model, tokens).mean()

    batch_fn, loss_fn = batch_fn or tokens_at, loss_fn or mean_loss

    def eval_fn(model) -> dict[str, float]:
        losses = next_token_losses(model, eval_tokens)
        correct = model(eval_tokens)[:, :-1].argmax(-1) == eval_tokens[:, 1:]
        return {"loss_all": losses.mean().item(), "loss_first_copy": losses[first_mask].mean().item(),
                "loss_repeat": losses[repeat_mask].mean().item(),
                "acc_repeat": correct[repeat_mask].float().mean().item()}

    log = train(model, batch_fn, loss_fn, config.train_spec(), eval_fn=eval_fn, work_dir=ctx.work_dir,
                progress=ctx.progress, desc=f"repeated segments {ctx.label}", device=device,
                initial_optimizer_state=initial_optimizer_state)
    final = log.evals.iloc[-1]
    summary = {"n_params": sum(p.numel() for p in model.parameters()), "final_train_loss": float(log.steps.loss.iloc[-1]),
               **{f"final_{k}": float(final[k]) for k in ("loss_all", "loss_first_copy", "loss_repeat", "acc_repeat")},
               "uniform_loss": math.log(config.vocab)}
    checkpoints = {checkpoint_name(step): state for step, state in log.checkpoints.items()}
    return RunResult(tables={"steps": log.steps, "evals": log.evals}, summary=summary, checkpoints=checkpoints,
                     seed=config.seed)


register(Experiment(
    name="induction",
    title="Induction heads in a 2-layer attention-only transformer",
    track="Attention & circuits",
    page="experiments/induction-heads.qmd",
    version=1,
    config_type=InductionConfig,
    scales={
        "smoke": {"two_layer": InductionConfig(**SMOKE), "one_layer": InductionConfig(n_layers=1, **SMOKE)},
        "cpu": {"two_layer": InductionConfig(), "one_layer": InductionConfig(n_layers=1)},
    },
    run=run,
    description="Random segment repeated; watch the repeat loss drop as previous-token and induction heads form.",
))
