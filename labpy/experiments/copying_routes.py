"""How do models with no induction head copy? Where their heads look on the task's own sequences.

`induction_head_count` found 2-layer models (two heads a layer, and one eight-head seed) that predict the repeat about
two nats better than the first copy while no head scores above 0.1 as an induction or a previous-token head on
repeated random tokens. To copy, a last-layer head must read the answer from a position that holds it: the token just
after the earlier occurrence of the current one (offset +1 from that occurrence), or a later position that took it in
through layer 0. This retrains two of those models (same config, so the same weights) and measures, on the task's
evaluation sequences:

- **layer 0**: each head's attention from every query at position 16 or later to the token itself (0 back), to each of
  the 15 before it, and to everything further back, beside what uniform attention would give;
- **layer 1**: each head's attention from the repeat's queries to the keys around the earlier occurrence of the query's
  token (offsets −1 to +15 from it, those before the query) and elsewhere, beside uniform attention's share of those
  keys.

The stored four-head model, which has induction heads, is measured the same way on the page.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..interp.capture import attention_patterns
from ..models.toy import load_toy_transformer
from ..store import RunResult
from ..tasks.repeated_tokens import sample
from ..train import step_generator
from .induction import EVAL_SEED, SMOKE, InductionConfig, train_on_repeats
from .registry import Experiment, RunContext, register

# Added after the first run, whose buckets stopped at 3 back and +3 (the predictions read those): the heads of the
# models without induction heads looked further, so every distance up to 15 is kept.
BACK = tuple(range(16))        # layer 0: attention this many tokens back; the rest is f"{len(BACK)} or more"
AROUND = tuple(range(-1, 16))  # layer 1: keys at these offsets from the earlier occurrence of the query's token
FIRST_QUERY = len(BACK)        # layer-0 queries from here on, so every distance in BACK exists


@torch.no_grad()
def attention_routes(model, config: InductionConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(layer-0 table: head, back, attention, uniform; layer-1 table: head, offset, attention, uniform), means over
    the task's evaluation sequences. `uniform` is what attention spread evenly over the visible keys would give."""
    batch = sample(config.task(), config.eval_batch, step_generator(EVAL_SEED, config.seed))
    patterns = attention_patterns(model, batch.tokens)                       # (n_layers, B, H, T, T)
    T = batch.tokens.shape[1]
    visible = torch.arange(1, T + 1, dtype=torch.float)                      # (T,) keys query t sees
    layer0 = []
    queries = torch.arange(FIRST_QUERY, T)
    for d in BACK:
        mass = patterns[0][:, :, queries, queries - d].mean(dim=(0, 2))        # (H,)
        layer0 += [{"head": h, "back": str(d), "attention": float(mass[h]),
                    "uniform": float((1 / visible[queries]).mean())} for h in range(config.n_heads)]
    near = sum(patterns[0][:, :, queries, queries - d] for d in BACK).mean(dim=(0, 2))
    layer0 += [{"head": h, "back": f"{len(BACK)} or more", "attention": float(1 - near[h]),
                "uniform": float((1 - len(BACK) / visible[queries]).mean())} for h in range(config.n_heads)]
    _, repeat = batch.target_masks()                                          # (B, T-1): query j predicts j+1
    rows, cols = repeat.nonzero(as_tuple=True)                                # repeat queries (b, q)
    earlier = cols - batch.segment_len[rows]                                  # the earlier occurrence of x_q
    last = config.n_layers - 1
    layer1, taken, seen = [], 0.0, 0.0
    for k in AROUND:
        keys = earlier + k                                                    # (N,)
        exists = ((keys >= 0) & (keys <= cols)).float()    # (N,): 0 before position 0 or after the query (no key)
        mass = (patterns[last][rows, :, cols, keys.clamp(0, T - 1)] * exists.unsqueeze(1)).mean(dim=0)  # (H,)
        taken = taken + mass
        seen = seen + exists
        layer1 += [{"head": h, "offset": str(k), "attention": float(mass[h]),
                    "uniform": float((exists / visible[cols]).mean())} for h in range(config.n_heads)]
    layer1 += [{"head": h, "offset": "elsewhere", "attention": float(1 - taken[h]),
                "uniform": float((1 - seen / visible[cols]).mean())} for h in range(config.n_heads)]
    return pd.DataFrame(layer0), pd.DataFrame(layer1)


def run(config: InductionConfig, ctx: RunContext) -> RunResult:
    result = train_on_repeats(config, ctx)
    final = max(result.checkpoints)                                           # step_006000: names sort by step
    model = load_toy_transformer(config.model_config(), result.checkpoints[final])
    layer0, layer1 = attention_routes(model, config)
    return RunResult(tables={"layer0": layer0, "layer1": layer1}, summary=result.summary, seed=config.seed)


register(Experiment(
    name="copying_routes",
    title="How models with no induction head copy: where their heads look on the task's sequences",
    track="Attention & circuits",
    page="experiments/induction-heads.qmd",
    version=1,
    config_type=InductionConfig,
    scales={"smoke": {"heads-2-s0": InductionConfig(n_heads=2, **{**SMOKE, "checkpoint_every": 60})},
            "cpu": {"heads-2-s0": InductionConfig(n_heads=2, checkpoint_every=6000),
                    "heads-8-s1": InductionConfig(n_heads=8, seed=1, checkpoint_every=6000)}},
    run=run,
    description="Two of induction_head_count's models without induction heads (two heads, seed 0; eight heads, "
                "seed 1), retrained: layer 0's attention by distance back, layer 1's attention from the repeat to "
                "the keys around the earlier occurrence.",
))
