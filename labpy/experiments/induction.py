"""Induction heads: how a 2-layer attention-only transformer learns to copy (and why 1 layer cannot).

Run: train on random tokens with one repeated segment of random length (`labpy.tasks.repeated_tokens`),
evaluating loss on the first copy and on the repeat every `eval_every` steps and keeping checkpoints every
`checkpoint_every` steps. Analysis (used by the page): head scores over training from the checkpoints, the
phase change in the repeat loss, and the ablation of the previous-token head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from ..interp.heads import head_scores_table, induction_scores, patterns_with_head_ablated
from ..models.toy import ToyTransformerConfig, build_toy_transformer, load_toy_transformer
from ..store import RunEntry, RunResult, checkpoint_name
from ..tasks.repeated_tokens import RepeatedSegmentTask, repeated_random_tokens, sample
from ..device import lab_device, to_device
from ..train import TrainSpec, step_generator, train
from ..validation import check_ranges, int_at_least, require
from .registry import Experiment, RunContext, register

EVAL_SEED = 1_000_000  # eval and scoring data never overlap training seeds


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


def _next_token_losses(model, tokens: torch.Tensor) -> torch.Tensor:
    """Per-target loss (B, T-1): position t predicts token t+1."""
    logits = model(tokens)
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")


def run(config: InductionConfig, ctx: RunContext) -> RunResult:
    task = config.task()
    device = lab_device()
    model = build_toy_transformer(config.model_config(), seed=config.seed)
    eval_batch = sample(task, config.eval_batch, step_generator(EVAL_SEED, config.seed))
    first_mask, repeat_mask = to_device(eval_batch.target_masks(), device)  # (B, T-1) each
    eval_tokens = eval_batch.tokens.to(device)                              # (B, T)

    def batch_fn(step: int) -> torch.Tensor:
        return sample(task, config.batch_size, step_generator(config.seed, step)).tokens

    def loss_fn(model, tokens: torch.Tensor) -> torch.Tensor:
        return _next_token_losses(model, tokens).mean()

    def eval_fn(model) -> dict[str, float]:
        losses = _next_token_losses(model, eval_tokens)
        correct = model(eval_tokens)[:, :-1].argmax(-1) == eval_tokens[:, 1:]
        return {"loss_all": losses.mean().item(), "loss_first_copy": losses[first_mask].mean().item(),
                "loss_repeat": losses[repeat_mask].mean().item(),
                "acc_repeat": correct[repeat_mask].float().mean().item()}

    spec = TrainSpec(steps=config.steps, lr=config.lr, warmup_steps=config.warmup_steps,
                     weight_decay=config.weight_decay, eval_every=config.eval_every,
                     checkpoint_steps=config.checkpoint_steps(), seed=config.seed,
                     resume_every=min(500, max(20, config.steps // 5)))
    log = train(model, batch_fn, loss_fn, spec, eval_fn=eval_fn, work_dir=ctx.work_dir, progress=ctx.progress,
                desc=f"induction {ctx.label}", device=device)
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
        "smoke": {"two_layer": InductionConfig(steps=60, eval_every=20, checkpoint_every=30, eval_batch=32,
                                               score_batch=8),
                  "one_layer": InductionConfig(n_layers=1, steps=60, eval_every=20, checkpoint_every=30,
                                               eval_batch=32, score_batch=8)},
        "cpu": {"two_layer": InductionConfig(), "one_layer": InductionConfig(n_layers=1)},
    },
    run=run,
    description="Random segment repeated; watch the repeat loss drop as previous-token and induction heads form.",
))


# ---- analysis used by the page (cheap: forward passes over stored checkpoints) ----

def load_model(entry: RunEntry, step: int | None = None):
    """The stored model at a training step (default: the last checkpoint)."""
    config = entry.config
    step = entry.checkpoint_steps()[-1] if step is None else step
    return load_toy_transformer(config.model_config(), entry.step_checkpoint(step))


def score_tokens(config: InductionConfig) -> torch.Tensor:
    return repeated_random_tokens(config.score_batch, config.score_half, config.vocab,
                                  step_generator(EVAL_SEED + 1, config.seed))


def head_scores_over_training(entry: RunEntry) -> pd.DataFrame:
    """Previous-token and induction score of every head at every stored checkpoint."""
    config = entry.config
    tokens = score_tokens(config)
    frames = []
    for step in entry.checkpoint_steps():
        table = head_scores_table(load_model(entry, step), tokens, config.score_half)
        frames.append(table.assign(step=step))
    return pd.concat(frames, ignore_index=True)


def phase_change(evals: pd.DataFrame, column: str = "loss_repeat") -> dict[str, float]:
    """Locate the drop of a loss curve: start (10% of the fall done), middle (50%), end (90%).

    The curve is smoothed with a centred rolling median (5 evals) so a single noisy eval cannot fake a drop.
    The fall is measured from the early plateau (max of the smoothed curve over the first quarter) to the end.
    """
    smooth = evals[column].rolling(5, center=True, min_periods=1).median()
    steps = evals["step"].to_numpy()
    quarter = max(1, len(smooth) // 4)
    high, low = float(smooth.iloc[:quarter].max()), float(smooth.iloc[-5:].mean())
    fall = high - low
    after_peak = smooth.iloc[int(smooth.iloc[:quarter].to_numpy().argmax()):]

    def crossing(fraction: float) -> float:
        below = after_peak[after_peak <= high - fraction * fall]
        return float(steps[below.index[0]]) if len(below) else float("nan")

    start, middle, end = crossing(0.1), crossing(0.5), crossing(0.9)
    return {"plateau_loss": high, "final_loss": low, "fall": fall, "start_step": start, "middle_step": middle,
            "end_step": end, "width_steps": end - start, "total_steps": float(steps[-1])}


def first_crossing(scores: pd.DataFrame, column: str, threshold: float = 0.4) -> float:
    """First checkpoint step at which the best head's `column` score exceeds `threshold` (NaN if never)."""
    best = scores.groupby("step")[column].max()
    above = best[best > threshold]
    return float(above.index[0]) if len(above) else float("nan")


def ablation_table(entry: RunEntry) -> pd.DataFrame:
    """Induction score of the strongest layer-1 induction head: intact, and with each layer-0 head zero-ablated."""
    config = entry.config
    model, tokens = load_model(entry), score_tokens(config)
    scores = head_scores_table(model, tokens, config.score_half)
    top = scores[scores.layer == config.n_layers - 1].sort_values("induction").iloc[-1]
    rows = [{"ablated": "none", "induction_score": float(top.induction)}]
    for head in range(config.n_heads):
        patterns = patterns_with_head_ablated(model, tokens, layer=0, head=head)
        score = induction_scores(patterns, config.score_half)[int(top["layer"]), int(top["head"])].item()
        prev = float(scores[(scores.layer == 0) & (scores["head"] == head)].previous_token.iloc[0])
        rows.append({"ablated": f"L0H{head}", "induction_score": score, "ablated_head_previous_token_score": prev})
    return pd.DataFrame(rows).assign(induction_head=top.label)


def steepest_fall(evals: pd.DataFrame, window: int, column: str = "loss_repeat") -> dict[str, float]:
    """The largest drop of `column` over any `window` steps (in eval-step units), and where it ends."""
    per_eval = max(1, round(window / float(evals.step.diff().median())))
    fall = (evals[column].shift(per_eval) - evals[column])
    end = int(fall.idxmax())
    return {"fall": float(fall.max()), "end_step": float(evals.step[end]), "window": float(window)}


@torch.no_grad()
def loss_by_earlier_occurrence(entry: RunEntry) -> pd.DataFrame:
    """Mean loss on targets outside the repeat, split by whether the target token already occurred earlier.

    Outside the repeat every token is random, so an ideal model scores ln V on both groups. A model that has
    learned "predict tokens already in the context" scores lower on the seen group and higher on the unseen.
    """
    config = entry.config
    batch = sample(config.task(), config.eval_batch, step_generator(EVAL_SEED, config.seed))
    _, repeat = batch.target_masks()
    losses = _next_token_losses(load_model(entry), batch.tokens)            # (B, T-1)
    targets = batch.tokens[:, 1:]                                            # (B, T-1)
    prefix_has = (batch.tokens.unsqueeze(1) == targets.unsqueeze(2))         # (B, T-1, T): target == token s
    causal = torch.arange(batch.tokens.shape[1]).unsqueeze(0) <= torch.arange(targets.shape[1]).unsqueeze(1)
    seen = (prefix_has & causal).any(-1)                                     # token seen at positions <= t-1
    rows = []
    for name, mask in (("seen earlier in the context", seen & ~repeat), ("not seen before", ~seen & ~repeat)):
        rows.append({"target": name, "loss": losses[mask].mean().item(), "count": int(mask.sum())})
    return pd.DataFrame(rows)


def head_summary(scores: pd.DataFrame) -> dict:
    """The strongest induction (last layer) and previous-token (layer 0) heads at the end, and when each kind
    first passed 0.4: the facts the page's prose, the predictions and the paper claims all use."""
    final = scores[scores.step == scores.step.max()]
    last = int(scores.layer.max())
    return {
        "induction_head": final[final.layer == last].sort_values("induction").iloc[-1],
        "prev_head": final[final.layer == 0].sort_values("previous_token").iloc[-1],
        "prev_cross_step": first_crossing(scores[scores.layer == 0], "previous_token"),
        "induction_cross_step": first_crossing(scores[scores.layer == last], "induction"),
    }


def measurements(two: RunEntry, one: RunEntry, scores: pd.DataFrame | None = None,
                 scores_one: pd.DataFrame | None = None, ablation: pd.DataFrame | None = None) -> dict:
    """Every number the predictions and paper claims are checked against (pass what a page already computed)."""
    scores = head_scores_over_training(two) if scores is None else scores
    scores_one = head_scores_over_training(one) if scores_one is None else scores_one
    ablation = ablation_table(two) if ablation is None else ablation
    evals, evals_one = two.table("evals"), one.table("evals")
    drop = phase_change(evals)
    heads = head_summary(scores)
    induction_head, prev_head = heads["induction_head"], heads["prev_head"]
    intact = float(ablation.induction_score.iloc[0])
    ablated = float(ablation[ablation.ablated == prev_head["label"]].induction_score.iloc[0])
    others = ablation[~ablation.ablated.isin(["none", prev_head["label"]])].induction_score
    return {
        **drop,
        "width_fraction": drop["width_steps"] / drop["total_steps"],
        "best_induction": float(induction_head["induction"]),
        "induction_head": induction_head["label"],
        "previous_token_head": prev_head["label"],
        "best_previous_token": float(prev_head["previous_token"]),
        "prev_cross_step": heads["prev_cross_step"],
        "induction_cross_step": heads["induction_cross_step"],
        "induction_intact": intact,
        "induction_ablated": ablated,
        "ablated_fraction_left": ablated / intact,
        "other_ablations_min": float(others.min()),
        "one_layer_best_induction": float(scores_one.induction.max()),
        "one_layer_gap": float(evals_one.loss_first_copy.iloc[-1] - evals_one.loss_repeat.iloc[-1]),
        "one_layer_repeat_loss": float(evals_one.loss_repeat.iloc[-1]),
        "first_copy_loss": float(evals.loss_first_copy.iloc[-1]),
        "repeat_loss": float(evals.loss_repeat.iloc[-1]),
    }
