"""1-, 2- and 3-layer attention-only transformers on the induction data, and a 3-layer one trained with dropout.

The 1- and 2-layer models are the stored `induction` runs (same task, steps and seed); this experiment adds
3-layer models, two seeds, with and without dropout, and the dropout ones again trained `LONGER` times as many
steps (in 6000 they had not learned to copy). Dropout here is GPT-2's: on the attention probabilities and
on each attention layer's output, p = 0.1, applied through hook points during training only. Its masks come from
a generator seeded by (seed, step), so a resumed run draws the same masks. The pages' analysis
(`attention_depth_analysis.py`): composition scores, per-head ablations split by how ambiguous a one-token
match is, and whether other heads make up for an ablated one (backup heads), with and without dropout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..store import RunResult
from ..tasks.repeated_tokens import sample
from ..train import step_generator
from ..validation import check_ranges, number_between
from .induction import InductionConfig, next_token_losses, train_on_repeats
from .registry import Experiment, RunContext, register

DROPOUT_SEED = 3_000_000  # dropout masks never share a stream with the data


@dataclass(frozen=True)
class DepthConfig(InductionConfig):
    n_layers: int = 3
    dropout: float = 0.0           # on attention probabilities and attention-layer outputs, training only
    checkpoint_every: int = 6000   # initialisation and the end: the composition scores' baseline and result

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, rules={"dropout": number_between(0, 1, high_open=True)})


@dataclass
class DropoutBatch:
    tokens: torch.Tensor   # (B, T)
    step: int


DROPOUT_SITES = {"pattern": "attn.hook_pattern",   # each attention probability, (B, H, T, T)
                 "output": "hook_attn_out"}       # each unit of an attention layer's output, (B, T, d_model)
# where an experiment's config may put its dropout: one site or both
DROPOUT_PLACES = {"pattern": ("pattern",), "output": ("output",), "both": tuple(DROPOUT_SITES)}


def dropout_hooks(model, p: float, generator: torch.Generator, sites: tuple[str, ...] = tuple(DROPOUT_SITES),
                  layers: tuple[int, ...] | None = None) -> list[tuple[str, object]]:
    """Forward hooks that drop each attention probability and each attention output unit (or only the `sites`
    named, in only the `layers` named) with probability p, scaling the rest by 1/(1-p) — `F.dropout`, with masks
    from `generator` instead of the global RNG."""
    def drop(x: torch.Tensor, hook=None) -> torch.Tensor:
        keep = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) >= p
        return x * keep / (1 - p)

    layers = range(model.cfg.n_layers) if layers is None else layers
    return [(f"blocks.{layer}.{DROPOUT_SITES[site]}", drop) for site in sites for layer in layers]


def run(config: DepthConfig, ctx: RunContext) -> RunResult:
    if config.dropout == 0:
        return train_on_repeats(config, ctx)
    task = config.task()

    def batch_fn(step: int) -> DropoutBatch:
        return DropoutBatch(sample(task, config.batch_size, step_generator(config.seed, step)).tokens, step)

    def loss_fn(model, batch: DropoutBatch) -> torch.Tensor:
        generator = step_generator(DROPOUT_SEED + config.seed, batch.step)
        with model.hooks(fwd_hooks=dropout_hooks(model, config.dropout, generator)):
            return next_token_losses(model, batch.tokens).mean()

    return train_on_repeats(config, ctx, batch_fn=batch_fn, loss_fn=loss_fn)


LONGER = 3   # the dropout models trained this many times longer: do they learn to copy, and then self-repair?


def _configs(**common) -> dict[str, DepthConfig]:
    configs = {f"three_layer{'-dropout' if p else ''}-s{seed}": DepthConfig(dropout=p, seed=seed, **common)
               for p in (0.0, 0.1) for seed in (0, 1)}
    for seed in (0, 1):   # checkpoints every `checkpoint_every` steps: when learning to copy starts shows
        configs[f"three_layer-dropout-long-s{seed}"] = replace(configs[f"three_layer-dropout-s{seed}"],
                                                               steps=LONGER * configs["three_layer-s0"].steps)
    return configs


register(Experiment(
    name="attention_depth",
    title="One, two and three attention-only layers: composition, ablations and backup heads",
    track="Attention & circuits",
    page="experiments/attention-depth.qmd",
    version=1,
    config_type=DepthConfig,
    scales={
        "smoke": _configs(steps=40, eval_every=20, checkpoint_every=40, eval_batch=32, score_batch=8),
        "cpu": _configs(),
    },
    run=run,
    description="3-layer attention-only models on the induction task, two seeds, with and without dropout (and "
                "with dropout for 3x the steps); the 1- and 2-layer models are the stored `induction` runs.",
))
