"""Two-hop lookup: a behaviour three attention-only layers learn and two cannot.

Run: 1-, 2- and 3-layer attention-only models (the shapes of the `induction` and `attention_depth` models) are
trained on `labpy.tasks.two_hop` — a dictionary of pairs in context, then queries that follow it once (HOP1) or
twice (HOP2) — with the loss on the answers only. Evaluations every `eval_every` steps split accuracy and loss by
hop; checkpoints every `checkpoint_every` steps let the page read the circuit before, during and after it forms.
The page's analysis (`two_hop_analysis.py`): where each head looks from the queries, per-head ablations by hop,
and Q-/K-composition between the heads that carry the two hops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..device import lab_device, to_device
from ..models.toy import ToyTransformerConfig, build_toy_transformer
from ..store import RunResult, checkpoint_name
from ..tasks.two_hop import TwoHopBatch, TwoHopTask, sample
from ..train import TrainSpec, step_generator, train
from ..validation import check_ranges, int_at_least, number_between, require
from .registry import Experiment, RunContext, register

EVAL_SEED = 2_000_000  # evaluation dictionaries never overlap the training stream


@dataclass(frozen=True)
class TwoHopConfig:
    n_layers: int = 3
    d_model: int = 64
    n_heads: int = 4
    d_head: int = 16
    vocab: int = 32
    n_pairs: int = 8
    n_queries: int = 6
    p_two_hop: float = 0.5
    steps: int = 15000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    eval_every: int = 250
    eval_batch: int = 1000
    checkpoint_every: int = 1500
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_layers", "d_model", "n_heads", "d_head", "n_queries", "steps",
                                         "batch_size", "eval_every", "eval_batch", "checkpoint_every"),
                     nonneg_int=("warmup_steps", "seed"), positive=("lr",), nonneg=("weight_decay",),
                     rules={"vocab": int_at_least(3), "n_pairs": int_at_least(3),
                            "p_two_hop": number_between(0, 1)})
        require(self, self.n_pairs <= self.vocab, "n_pairs",
                f"is out of range; the pairs' keys are distinct tokens, so it must be <= vocab = {self.vocab}")
        require(self, self.n_queries <= self.n_pairs, "n_queries",
                f"is out of range; queries ask about distinct keys, so it must be <= n_pairs = {self.n_pairs}")

    @property
    def seq_len(self) -> int:
        return self.task().seq_len

    def task(self) -> TwoHopTask:
        return TwoHopTask(self.vocab, self.n_pairs, self.n_queries, self.p_two_hop)

    def model_config(self) -> ToyTransformerConfig:
        task = self.task()
        return ToyTransformerConfig(n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
                                    d_head=self.d_head, d_vocab=task.n_tokens, n_ctx=task.seq_len, attn_only=True)

    def checkpoint_steps(self) -> tuple[int, ...]:
        return tuple(sorted({*range(0, self.steps + 1, self.checkpoint_every), self.steps}))


def eval_batch(config: TwoHopConfig, n: int | None = None) -> TwoHopBatch:
    """The fixed evaluation batch (the same for every model and seed): fresh dictionaries the models never saw."""
    return sample(config.task(), n or config.eval_batch, step_generator(EVAL_SEED, 0))


def answer_logits(model, batch: TwoHopBatch, task: TwoHopTask) -> torch.Tensor:
    """(B, Q, V+2) logits read at the query tokens, where each answer is predicted."""
    return model(batch.tokens)[:, task.query_positions()]


def answer_losses(model, batch: TwoHopBatch, task: TwoHopTask) -> torch.Tensor:
    """(B, Q) cross-entropy of each answer."""
    return F.cross_entropy(answer_logits(model, batch, task).transpose(1, 2), batch.answers, reduction="none")


@torch.no_grad()
def hop_metrics(model, batch: TwoHopBatch, task: TwoHopTask) -> dict[str, float]:
    """Loss and accuracy on the queries of each hop count: loss_hop1, acc_hop1, loss_hop2, ..."""
    logits = answer_logits(model, batch, task)
    losses = F.cross_entropy(logits.transpose(1, 2), batch.answers, reduction="none")
    correct = (logits.argmax(-1) == batch.answers).float()
    out = {}
    for hops in range(1, task.max_hops + 1):
        mask = batch.hops == hops
        out[f"loss_hop{hops}"], out[f"acc_hop{hops}"] = losses[mask].mean().item(), correct[mask].mean().item()
    return out


def run(config: TwoHopConfig, ctx: RunContext) -> RunResult:
    task, device = config.task(), lab_device()
    model = build_toy_transformer(config.model_config(), seed=config.seed)
    held_out = to_device(eval_batch(config), device)

    def batch_at(step: int) -> TwoHopBatch:
        return sample(task, config.batch_size, step_generator(config.seed, step))

    def loss_fn(model, batch: TwoHopBatch) -> torch.Tensor:    # `train` has moved the batch to the device
        return answer_losses(model, batch, task).mean()

    spec = TrainSpec(steps=config.steps, lr=config.lr, warmup_steps=config.warmup_steps,
                     weight_decay=config.weight_decay, eval_every=config.eval_every,
                     checkpoint_steps=config.checkpoint_steps(), seed=config.seed,
                     resume_every=min(500, max(20, config.steps // 5)))
    log = train(model, batch_at, loss_fn, spec, eval_fn=lambda m: hop_metrics(m, held_out, task),
                work_dir=ctx.work_dir, progress=ctx.progress, desc=f"two-hop {ctx.label}", device=device)
    final = log.evals.iloc[-1]
    summary = {"n_params": sum(p.numel() for p in model.parameters()),
               **{f"final_{k}": float(final[k]) for hops in range(1, task.max_hops + 1)
                  for k in (f"loss_hop{hops}", f"acc_hop{hops}")},
               "uniform_loss": math.log(config.vocab),
               # the best a model blind to f(f(q)) can do: spread over the dictionary's values except f(q) and q
               "guess_loss": math.log(config.n_pairs - 2)}
    checkpoints = {checkpoint_name(step): state for step, state in log.checkpoints.items()}
    return RunResult(tables={"steps": log.steps, "evals": log.evals}, summary=summary, checkpoints=checkpoints,
                     seed=config.seed)


def _configs(**common) -> dict[str, TwoHopConfig]:
    names = {1: "one_layer", 2: "two_layer", 3: "three_layer"}
    return {f"{names[n]}-s{seed}": TwoHopConfig(n_layers=n, seed=seed, **common)
            for n, seeds in ((1, (0,)), (2, (0, 1)), (3, (0, 1))) for seed in seeds}


register(Experiment(
    name="two_hop",
    title="Two-hop lookup: what three attention-only layers do that two cannot",
    track="Attention & circuits",
    page="experiments/two-hop.qmd",
    version=1,
    config_type=TwoHopConfig,
    scales={
        "smoke": _configs(steps=40, eval_every=20, checkpoint_every=20, eval_batch=64),
        "cpu": _configs(),
    },
    run=run,
    description="1-, 2- and 3-layer attention-only models on an in-context dictionary with one- and two-hop "
                "queries: two layers follow one hop, three follow two.",
))
