"""Do the induction heads share the copying because there were heads to share it? One, two or eight heads a layer.

The stored 2-layer `induction` model (four heads a layer, seed 0) grew one previous-token head in layer 0 and four
induction heads in layer 1, each covering for the others when ablated. This trains the same model, task, steps and
schedule with one, two and eight heads a layer (each head keeps d_head = 16, so more heads is more attention), two
seeds each, and four heads again with seed 1. Every head is scored (previous-token, induction) at each checkpoint
as the run goes, and at the end each layer-1 head is zeroed alone, then all but the strongest, for the loss on the
repeat and on the first copy. Only the tables are stored, not the checkpoints: the run store is nearly full.
"""

from __future__ import annotations

import pandas as pd

from ..interp.heads import head_scores_table, zero_heads_hook
from ..models.toy import load_toy_transformer
from ..store import STEP_CHECKPOINT, RunResult, as_stored
from .induction import SMOKE, InductionConfig, copy_losses, score_tokens, train_on_repeats
from .registry import Experiment, RunContext, register

HEAD_COUNTS = (1, 2, 8)


def last_layer_ablations(model, config: InductionConfig) -> pd.DataFrame:
    """The loss on the repeat and on the first copy (the task's eval sequences) intact, with each last-layer head
    zeroed alone, and with every last-layer head but the strongest induction head zeroed."""
    losses = copy_losses(model, config)
    last = config.n_layers - 1
    scores = head_scores_table(model, score_tokens(config), config.score_half)
    strongest = int(scores[scores.layer == last].sort_values("induction")["head"].iloc[-1])
    cases = [("none", [])] + [(f"L{last}H{h}", [h]) for h in range(config.n_heads)]
    if config.n_heads > 1:
        cases.append((f"all but L{last}H{strongest}", [h for h in range(config.n_heads) if h != strongest]))
    rows = []
    for name, heads in cases:
        repeat, first = losses([(f"blocks.{last}.attn.hook_z", zero_heads_hook(heads))] if heads else [])
        rows.append({"zeroed": name, "heads_zeroed": len(heads), "loss_repeat": repeat, "loss_first_copy": first})
    return pd.DataFrame(rows).assign(strongest=f"L{last}H{strongest}")


def run(config: InductionConfig, ctx: RunContext) -> RunResult:
    result = train_on_repeats(config, ctx)
    tokens = score_tokens(config)
    scores, final = [], None
    for name, state in sorted(result.checkpoints.items()):
        step = int(STEP_CHECKPOINT.fullmatch(name).group(1))
        # scored as the store would keep the weights (half precision), like the stored `induction` runs
        model = load_toy_transformer(config.model_config(), as_stored(state))
        scores.append(head_scores_table(model, tokens, config.score_half).assign(step=step))
        final = model
    ablations = last_layer_ablations(final, config)
    return RunResult(tables={"evals": result.tables["evals"], "scores": pd.concat(scores, ignore_index=True),
                             "ablations": ablations},
                     summary={**result.summary, "n_heads": config.n_heads}, seed=config.seed)


def head_count_configs(**common) -> dict[str, InductionConfig]:
    configs = {f"heads-{n}-s{seed}": InductionConfig(n_heads=n, seed=seed, **common)
               for n in HEAD_COUNTS for seed in (0, 1)}
    configs["heads-4-s1"] = InductionConfig(seed=1, **common)   # seed 0 with four heads is `induction`'s two_layer
    return configs


register(Experiment(
    name="induction_head_count",
    title="One, two or eight heads a layer: how many induction heads grow, and does one head copy as well?",
    track="Attention & circuits",
    page="experiments/induction-heads.qmd",
    version=1,
    config_type=InductionConfig,
    scales={"smoke": {k: v for k, v in head_count_configs(**SMOKE).items() if k in ("heads-1-s0", "heads-8-s0")},
            "cpu": head_count_configs()},
    run=run,
    description="The 2-layer induction model with 1, 2 and 8 heads a layer (two seeds each) and 4 heads with a "
                "second seed: every head's scores at each checkpoint, the repeat loss over training, and each "
                "layer-1 head zeroed at the end.",
))
