"""Does copying without an induction head pay for ambiguity without dropout too? `induction_head_count`'s models.

On the attention-depth page the 3-layer models trained with dropout grew no induction head, copied by looking several
tokens back, and paid far more on ambiguous repeat targets (the current token seen twice or more before) than the
models without dropout. `induction_head_count` trained 2-layer models with one, two, four and eight heads a layer,
some of which grew no induction head either, without dropout. This retrains all seven of them (same configs, so the
same weights; only tables are stored, the store being nearly full) and measures, as the attention-depth page does, on
its shared batch:

- the loss on the first copy and on unambiguous and ambiguous repeat targets;
- for every head, its previous-token and induction scores and where it looks on ambiguous targets
  (`labpy.interp.ambiguity.occurrence_shares`: its attention on the keys after an earlier occurrence of the
  current token, and the share of that on the right one).
"""

from __future__ import annotations

import pandas as pd
import torch

from ..interp.ambiguity import occurrence_shares, region_losses, region_masks
from ..interp.heads import head_scores_table
from ..models.toy import load_toy_transformer
from ..store import RunResult, as_stored
from .induction import SMOKE, InductionConfig, fixed_eval_batch, next_token_losses, score_tokens, train_on_repeats
from .induction_head_count import head_count_configs
from .registry import Experiment, RunContext, register


def run(config: InductionConfig, ctx: RunContext) -> RunResult:
    result = train_on_repeats(config, ctx)
    state = result.checkpoints[max(result.checkpoints)]                       # the final step's weights
    # measured as the store would keep the weights (half precision), like the stored models on the page
    model = load_toy_transformer(config.model_config(), as_stored(state))
    return RunResult(tables=ambiguity_tables(config, model), summary={**result.summary, "n_heads": config.n_heads},
                     seed=config.seed)


def ambiguity_tables(config: InductionConfig, model) -> dict[str, pd.DataFrame]:
    """The attention-depth page's measures of a trained model on its shared batch: `regions`, the loss by region
    (first copy, unambiguous and ambiguous repeat targets); `heads`, each head's previous-token and induction scores
    and where it looks on ambiguous targets."""
    batch = fixed_eval_batch(config)
    masks = region_masks(batch)
    with torch.no_grad():
        regions = region_losses(next_token_losses(model, batch.tokens), masks)
    heads = occurrence_shares(model, batch, masks["repeat, ambiguous"]).merge(
        head_scores_table(model, score_tokens(config), config.score_half)[["label", "previous_token", "induction"]],
        on="label")
    return {"regions": pd.DataFrame([{"region": r, "loss": v, "targets": int(masks[r].sum())}
                                     for r, v in regions.items()]),
            "heads": heads}


register(Experiment(
    name="route_ambiguity",
    title="Copying with and without an induction head: what ambiguity costs, without dropout",
    track="Attention & circuits",
    page="experiments/attention-depth.qmd",
    version=1,
    config_type=InductionConfig,
    scales={"smoke": {k: v for k, v in head_count_configs(**{**SMOKE, "checkpoint_every": 60}).items()
                      if k in ("heads-1-s0", "heads-4-s1")},
            "cpu": head_count_configs(checkpoint_every=6000)},
    run=run,
    description="induction_head_count's seven 2-layer models (1, 2 and 8 heads a layer, two seeds each; 4 heads, seed "
                "1), retrained: the loss on unambiguous and ambiguous repeat targets, and where each head looks on "
                "the ambiguous ones.",
))
