"""Does the stream's imbalance come before the cliff, and does resizing the embedding move the cliff?

`lr_cliff_diagnosis` found that at the cliff (width 64, hidden matrices at 2.5e-2, tied embedding at 1e-1) the
layers end up writing several times what the embedding puts into the stream, against far less with the embedding at
2e-1, but only at the end of training. Here the same runs are measured along the way (the stream's scales and the
held-out loss at `TIMELINE_STEPS`), and the embedding's size in the stream is changed directly: the embedded tokens
are multiplied by `embed_scale` on their way in (as Gemma multiplies by √d), leaving the tied readout as it is. If
the embedding being swamped is what drives the cliff, ×4 at 1e-1 should soften it and ×¼ at 2e-1 should bring it on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd
import torch

from ..device import lab_device
from ..models.lab_lm import lm_loss, mean_loss
from ..store import RunResult
from ..tasks.corpus import lm_batch_fn
from ..train import train
from ..validation import POSITIVE, check_ranges
from .lr_cliff_diagnosis import PROBE_WINDOWS, stream_scales
from .lr_embedding_split import split_config
from .lr_split_cliff import CLIFF_HIDDEN_LR
from .lr_untied import UntiedConfig
from .lr_width import SMOKE_WIDTHLESS
from .registry import Experiment, RunContext, register

TIMELINE_STEPS = (1, *range(5, 50, 5), *range(50, 201, 10))     # dense early, where the losses part
# arm: (peak rate, readout tied, embed_scale); the first three are `lr_cliff_diagnosis`'s runs
ARMS = {"tied at 1e-1": (1e-1, True, 1.0), "tied at 2e-1": (2e-1, True, 1.0), "untied at 1e-1": (1e-1, False, 1.0),
        "tied at 1e-1, embedding ×4": (1e-1, True, 4.0), "tied at 2e-1, embedding ×¼": (2e-1, True, 0.25)}


@dataclass(frozen=True)
class EmbedScaleConfig(UntiedConfig):
    """`UntiedConfig` with the embedded tokens × `embed_scale` as they enter the stream; a tied readout still reads
    the embedding matrix itself, so only the input side changes."""

    embed_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("embed_scale",))

    def build_model(self, seed: int) -> torch.nn.Module:
        model = super().build_model(seed)
        if self.embed_scale != 1:      # a hook, not in the state dict: a saved model must be rebuilt from its config
            model.model.embed_tokens.register_forward_hook(lambda module, args, out: out * self.embed_scale)
        return model


def arm_key(arm: str) -> str:
    """The store's name for an arm: 'tied at 1e-1, embedding ×4' -> 'tied_at_1e-1_embedding-x4'."""
    return arm.replace(", embedding ×", "_embedding-x").replace("¼", "0.25").replace(" ", "_")


def run(config: EmbedScaleConfig, ctx: RunContext) -> RunResult:
    device = lab_device()
    train_ids, val = config.data(device)                                                 # val (N, T+1)
    probe = val[:PROBE_WINDOWS]
    steps = tuple(s for s in TIMELINE_STEPS if s <= config.steps)
    timeline, evals, seeds = [], [], []
    for seed in config.seeds:
        model = config.build_model(seed)
        timeline += [{"seed": seed, "step": 0, **r} for r in stream_scales(model, probe, "initialisation")]
        spec = dataclasses.replace(config.train_spec(seed), measure_steps=steps)
        log = train(model, lm_batch_fn(train_ids, config.batch_size, config.seq_len, seed), lm_loss, spec,
                    eval_fn=lambda m: {"val_loss": mean_loss(m, val)},
                    stats_fn=lambda context: stream_scales(context.model, probe, "training"),
                    progress=ctx.progress, desc=f"{ctx.label} seed {seed}", device=device)
        timeline += [{"seed": seed, **r} for r in log.custom_stats.to_dict("records")]
        evals.append(log.evals[["step", "val_loss"]].assign(seed=seed))
        seeds.append({"seed": seed, "final_val_loss": float(log.evals.val_loss.iloc[-1])})
    per_seed = pd.DataFrame(seeds)
    timeline = pd.DataFrame(timeline)[["seed", "step", "measure", "value"]]
    return RunResult(tables={"timeline": timeline, "evals": pd.concat(evals, ignore_index=True),
                             "seeds": per_seed},
                     summary={"mean_final_val_loss": float(per_seed.final_val_loss.mean())}, seed=config.seeds[0])


def _scale(**common) -> dict[str, EmbedScaleConfig]:
    width = common.pop("hidden_size", 64)
    return {arm_key(arm): split_config(width, lr, CLIFF_HIDDEN_LR / lr, EmbedScaleConfig, tie_readout=tied,
                                       embed_scale=scale, **common)
            for arm, (lr, tied, scale) in ARMS.items()}


register(Experiment(
    name="lr_cliff_timeline",
    title="Does the stream's imbalance come before the cliff, and does resizing the embedding move it?",
    track="Training dynamics",
    page="experiments/learning-rate-width.qmd",
    version=1,
    config_type=EmbedScaleConfig,
    scales={"smoke": _scale(hidden_size=16, **SMOKE_WIDTHLESS), "cpu": _scale()},
    run=run,
    description="The width-64 model with the hidden matrices at 2.5e-2: the cliff runs measured along the way (the "
                "stream's scales, the held-out loss), and the embedding's input multiplied by 4 at 1e-1 or by ¼ at "
                "2e-1.",
))
