"""Does a longer run sharpen the blurred copying circuit into an induction circuit?

`copying_routes` found that two of `induction_head_count`'s models with no induction head (two heads a layer, seed 0;
eight heads, seed 1) copy through the induction circuit at a distance: layer 0 looks 6 to 15 tokens back and puts
nothing on the last few, and layer 1 reads from about as far past the earlier occurrence of the query's token. That
route has a blind spot the one-back circuit lacks. A repeat query at position j, in a segment of length L, finds the
earlier occurrence at j − L; the key k tokens past it exists only if k ≤ L. A circuit reading +7 to +11 cannot copy
a segment of 6 to 8 tokens, and the task's segments run from 6 to 24.

This trains the same two models (same config, so the first 6000 steps are the stored ones) four times as long, at
the same constant learning rate, and measures at every 3000th step:

- where the heads look (`copying_routes.attention_routes`: layer 0 by distance back, layer 1 by offset from the
  earlier occurrence), per head;
- the repeat's accuracy and loss by segment length, on 1024 evaluation sequences of their own;
- every head's previous-token and induction scores.

Only tables are stored, no checkpoints: the run store is nearly full.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..interp.heads import head_scores_table
from ..models.toy import load_toy_transformer
from ..store import STEP_CHECKPOINT, RunResult
from ..tasks.repeated_tokens import sample
from ..train import step_generator
from .copying_routes import attention_routes
from .induction import EVAL_SEED, SMOKE, InductionConfig, next_token_losses, score_tokens, train_on_repeats
from .registry import Experiment, RunContext, register

LENGTH_SEQUENCES = 1024   # evaluation sequences for the accuracy by segment length (about 54 per length)


@torch.no_grad()
def repeat_by_length(model, config: InductionConfig) -> pd.DataFrame:
    """The repeat's accuracy and loss for each segment length (one row per length: segment_len, targets, accuracy,
    loss), on sequences drawn apart from training, the task's eval batch and the head-score probes."""
    batch = sample(config.task(), LENGTH_SEQUENCES, step_generator(EVAL_SEED + 2, config.seed))
    _, repeat = batch.target_masks()                                          # (B, T-1)
    logits = model(batch.tokens)[:, :-1]                                      # (B, T-1, V)
    correct = (logits.argmax(-1) == batch.tokens[:, 1:]).float()              # (B, T-1)
    losses = next_token_losses(model, batch.tokens)                           # (B, T-1)
    rows = []
    for length in range(config.min_segment, config.max_segment + 1):
        mask = repeat & (batch.segment_len == length).unsqueeze(1)            # (B, T-1)
        if mask.any():
            rows.append({"segment_len": length, "targets": int(mask.sum()),
                         "accuracy": float(correct[mask].mean()), "loss": float(losses[mask].mean())})
    return pd.DataFrame(rows)


def run(config: InductionConfig, ctx: RunContext) -> RunResult:
    result = train_on_repeats(config, ctx)
    tokens = score_tokens(config)
    tables: dict[str, list[pd.DataFrame]] = {"layer0": [], "layer1": [], "by_length": [], "scores": []}
    for name, state in sorted(result.checkpoints.items()):
        step = int(STEP_CHECKPOINT.fullmatch(name).group(1))
        if step == 0:
            continue                                   # the random initialisation has no route to measure
        model = load_toy_transformer(config.model_config(), state)
        layer0, layer1 = attention_routes(model, config)
        tables["layer0"].append(layer0.assign(step=step))
        tables["layer1"].append(layer1.assign(step=step))
        tables["by_length"].append(repeat_by_length(model, config).assign(step=step))
        tables["scores"].append(head_scores_table(model, tokens, config.score_half).assign(step=step))
    return RunResult(tables={"evals": result.tables["evals"],
                             **{k: pd.concat(v, ignore_index=True) for k, v in tables.items()}},
                     summary=result.summary, seed=config.seed)


register(Experiment(
    name="blurred_circuit_longer",
    title="Does a longer run sharpen the blurred copying circuit? The two headless models trained four times as long",
    track="Attention & circuits",
    page="experiments/induction-heads.qmd",
    version=1,
    config_type=InductionConfig,
    scales={"smoke": {"heads-2-s0": InductionConfig(n_heads=2, **SMOKE)},
            "cpu": {"heads-2-s0": InductionConfig(n_heads=2, steps=24000, eval_every=100, checkpoint_every=3000),
                    "heads-8-s1": InductionConfig(n_heads=8, seed=1, steps=24000, eval_every=100,
                                                  checkpoint_every=3000)}},
    run=run,
    description="copying_routes' two models without induction heads (two heads, seed 0; eight heads, seed 1) "
                "trained for 24000 steps instead of 6000: where their heads look, the repeat's accuracy by segment "
                "length and every head's scores at every 3000th step.",
))
