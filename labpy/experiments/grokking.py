"""Grokking on modular addition (Nanda et al. 2023), in the paper's setup, with progress measures.

Run (one entry per initialisation seed, the same 30% training split for all): full-batch AdamW on `a + b mod p`
(`labpy.toy.modular_addition`). Every `eval_every` epochs it records train and test loss and accuracy, the
weight norm, and measures that use **no future information** — nothing from a later checkpoint and no test label:
how concentrated the embedding is on its own top frequencies, the same for the logits over every input pair,
and the *own-restricted* training loss (the logits cut down to the checkpoint's own top frequencies, scored on
training pairs only). The embedding's and the logits' norm in every frequency are kept too, to watch which
frequencies win. Training stops once the test accuracy has stayed at or above `stop_accuracy` for
`hold_epochs`, or at `max_epochs`. Afterwards, the paper's two measures that do use the future: the restricted
loss (all pairs, only the final model's key frequencies) and the excluded loss (training pairs, the key
frequencies removed) at every checkpoint kept in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from ..device import to_cpu, to_device
from ..store import RunResult
from ..toy.modular_addition import (ModularAdditionSpec, ModularAdditionTransformer, all_pairs,
                                    embedding_frequency_norms, excluded_logits, fast_logits, logit_frequency_norms,
                                    restricted_logits, sum_directions, top_frequencies, train_split)
from ..train import StatsContext, TrainLog, TrainSpec, train
from ..validation import check_ranges, int_at_least, number_between
from .registry import Experiment, RunContext, register


@dataclass(frozen=True)
class GrokkingConfig:
    p: int = 113
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    train_fraction: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 1.0
    beta2: float = 0.98
    max_epochs: int = 12_000
    eval_every: int = 100
    checkpoint_every: int = 200     # kept in memory for the restricted/excluded losses; only the last is stored
    stop_accuracy: float = 0.99
    hold_epochs: int = 1_500
    n_key_freqs: int = 5
    data_seed: int = 0
    seed: int = 0
    threads: int = 1               # one thread: on two shared cores, two threads were slower

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("d_model", "n_heads", "d_head", "d_mlp", "max_epochs", "eval_every",
                                         "checkpoint_every", "n_key_freqs", "threads"),
                     nonneg_int=("data_seed", "seed", "hold_epochs"), positive=("lr",), nonneg=("weight_decay",),
                     rules={"p": int_at_least(5), "train_fraction": number_between(0, 1, high_open=True),
                            "beta2": number_between(0, 1, high_open=True), "stop_accuracy": number_between(0, 1)})

    def spec(self) -> ModularAdditionSpec:
        return ModularAdditionSpec(p=self.p, d_model=self.d_model, n_heads=self.n_heads, d_head=self.d_head,
                                   d_mlp=self.d_mlp)


def should_stop(rows: list[dict[str, float]], stop_accuracy: float, hold_epochs: int) -> bool:
    """True once the test accuracy has been >= `stop_accuracy` at every evaluation of the last `hold_epochs`."""
    last = rows[-1]["step"]
    recent = [r for r in rows if r["step"] >= last - hold_epochs]
    return recent[0]["step"] <= last - hold_epochs and all(r["test_acc"] >= stop_accuracy for r in recent)


@dataclass
class GrokkingTraining:
    """One trained seed: its training log (evaluations, per-frequency norms, kept checkpoints), the model with its
    final weights (on the training device), the progress measures that use the future, and the run's summary."""

    log: TrainLog
    model: ModularAdditionTransformer
    progress: pd.DataFrame       # step, restricted_loss, excluded_train_loss at every kept checkpoint
    summary: dict[str, Any]


def train_grokking(config: GrokkingConfig, ctx: RunContext, device: torch.device | str) -> GrokkingTraining:
    """Train one seed on `device` and measure it; `grokking` (CPU, one entry per seed with its weights) and
    `grokking_seeds` (many seeds on a GPU, compact entries) store different parts of the same training."""
    spec = config.spec()
    tokens, labels = to_device(all_pairs(config.p), device)                           # (p², 3), (p²,)
    is_train = train_split(config.p, config.train_fraction, config.data_seed).to(device)  # (p²,)
    train_tokens, train_labels = tokens[is_train], labels[is_train]
    directions = sum_directions(config.p).to(device)                                   # (K, 2, p²)
    model = ModularAdditionTransformer(spec, seed=config.seed)
    n_top = config.n_key_freqs

    def loss_fn(model, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(fast_logits(model, x), y)

    latest: dict[str, torch.Tensor] = {}   # this evaluation's frequency norms, which the stats rows then reuse

    def eval_fn(model) -> dict[str, float]:
        logits = fast_logits(model, tokens)                                            # (p², p)
        losses = F.cross_entropy(logits, labels, reduction="none")
        correct = (logits.argmax(-1) == labels).float()
        embed_norms = embedding_frequency_norms(model.W_E, config.p)                   # (K,)
        logit_norms = logit_frequency_norms(logits, directions)                        # (K,)
        latest.update(embed=embed_norms, logit=logit_norms)
        own = top_frequencies(logit_norms, n_top)
        own_restricted = F.cross_entropy(restricted_logits(logits, directions, own)[is_train], train_labels)
        centred = logits - logits.mean(dim=0, keepdim=True)     # the per-output bias carries no frequency
        return {"train_loss": losses[is_train].mean().item(), "test_loss": losses[~is_train].mean().item(),
                "train_acc": correct[is_train].mean().item(), "test_acc": correct[~is_train].mean().item(),
                "weight_norm": math.sqrt(sum((p.detach() ** 2).sum().item() for p in model.parameters())),
                "embed_top_share": (embed_norms.sort(descending=True).values[:n_top].sum()
                                    / (model.W_E[:config.p] ** 2).sum()).item(),
                "logit_top_share": (logit_norms.sort(descending=True).values[:n_top].sum()
                                    / (centred ** 2).sum()).item(),
                "own_restricted_train_loss": own_restricted.item()}

    def frequency_rows(context: StatsContext) -> list[dict[str, float]]:
        """Every frequency's norms at this step: `train` calls this right after `eval_fn` at the same step."""
        embed, logit = latest["embed"], latest["logit"]
        return [{"freq": k + 1, "embed_norm": float(embed[k]), "logit_norm": float(logit[k])}
                for k in range(len(embed))]

    checkpoints = tuple(range(0, config.max_epochs + 1, config.checkpoint_every))
    train_spec = TrainSpec(steps=config.max_epochs, lr=config.lr, betas=(0.9, config.beta2),
                           weight_decay=config.weight_decay, grad_clip=None, eval_every=config.eval_every,
                           checkpoint_steps=checkpoints, resume_every=1_000, seed=config.seed,
                           threads=config.threads)
    log = train(model, lambda step: (train_tokens, train_labels), loss_fn, train_spec, eval_fn=eval_fn,
                work_dir=ctx.work_dir, progress=ctx.progress, desc=f"grokking {ctx.label}", stats_fn=frequency_rows,
                device=device, stop_fn=lambda rows: should_stop(rows, config.stop_accuracy, config.hold_epochs))
    epochs = int(log.steps.step.iloc[-1])
    final_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        key = top_frequencies(logit_frequency_norms(fast_logits(model, tokens), directions), n_top)
        rows = []
        for step, state in sorted(log.checkpoints.items()):
            model.load_state_dict(state)
            logits = fast_logits(model, tokens)
            rows.append({"step": step,
                         "restricted_loss": F.cross_entropy(restricted_logits(logits, directions, key), labels).item(),
                         "excluded_train_loss": F.cross_entropy(excluded_logits(logits, directions, key)[is_train],
                                                                train_labels).item()})
    summary = {"epochs": epochs, "key_freqs": key, "n_train": int(is_train.sum()), "n_test": int((~is_train).sum()),
               "n_params": sum(p.numel() for p in model.parameters()), "chance_loss": math.log(config.p),
               "stopped_early": epochs < config.max_epochs}
    model.load_state_dict(final_state)
    return GrokkingTraining(log=log, model=model, progress=pd.DataFrame(rows), summary=summary)


def run(config: GrokkingConfig, ctx: RunContext) -> RunResult:
    trained = train_grokking(config, ctx, "cpu")
    final = to_cpu({k: v.detach().clone() for k, v in trained.model.state_dict().items()})
    return RunResult(tables={"evals": trained.log.evals, "frequencies": trained.log.custom_stats,
                             "progress": trained.progress},
                     summary=trained.summary, checkpoints={"final": final}, seed=config.seed)


SEEDS = (0, 1, 2)

register(Experiment(
    name="grokking",
    title="Grokking modular addition: memorisation, then a Fourier circuit, then cleanup",
    track="Toy models",
    page="experiments/grokking.qmd",
    version=1,
    config_type=GrokkingConfig,
    scales={
        "smoke": {"seed0": GrokkingConfig(p=13, d_model=16, n_heads=2, d_head=8, d_mlp=32, train_fraction=0.5,
                                          lr=3e-3, max_epochs=60, eval_every=10, checkpoint_every=20,
                                          hold_epochs=20, n_key_freqs=2, threads=1)},
        # seed 0 runs on through the cleanup; the others stop sooner, to keep the three within the cpu budget
        "cpu": {f"seed{s}": GrokkingConfig(seed=s, hold_epochs=1_500 if s == 0 else 500) for s in SEEDS},
    },
    run=run,
    description="Modular addition mod 113 from 30% of the pairs: train loss falls at once, test loss much "
                "later; Fourier progress measures, with and without future information, over three seeds.",
))
