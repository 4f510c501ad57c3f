"""What `experiments/attention-depth.qmd` computes from the stored 1-, 2- and 3-layer attention-only models.

- losses split by how ambiguous a one-token match is: a repeat target whose current token occurred once before
  (only in the first copy) is unambiguous; one whose current token occurred twice or more is ambiguous for an
  induction head that matches one token, and needs the token before it too;
- composition scores (`labpy.interp.composition`), against the same model at initialisation;
- per-head effects on the loss: total (the head's output zeroed, everything downstream recomputed) and direct
  (only the head's own write to the final residual stream removed, everything else as in the clean run). Their
  difference is what the rest of the network makes up for: self-repair, the work of backup heads;
- where each head looks on ambiguous targets: of its attention on the tokens that followed an earlier occurrence of
  the current token, the share on the one the token before the current one picks out (one token or two matched);
  this and the losses by ambiguity live in `labpy.interp.ambiguity`, which `route_ambiguity`'s training runs use too.
All of it is forward passes of stored models on one fixed batch (seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from ..interp.ambiguity import (REGIONS, earlier_matches, occurrence_candidates,  # noqa: F401  (the page reads
                                occurrence_shares, region_losses, region_masks)   # them as ada.X)
from ..interp.heads import ablate_head_hook, capture_hook, head_scores_table
from ..store import RunEntry
from .induction import fixed_eval_batch, next_token_losses, score_tokens
from .induction_analysis import load_model
from .lab_lm_analysis import first_step_below
from .registry import StoredRuns



@dataclass(frozen=True)
class DepthModel:
    name: str          # "2 layers", "3 layers, dropout, seed 1"
    n_layers: int
    dropout: float
    seed: int
    entry: RunEntry

    def model(self, step: int | None = None):
        return load_model(self.entry, step)


def depth_models(depth: StoredRuns, induction: StoredRuns, longer: bool = False) -> list[DepthModel]:
    """The 1- and 2-layer `induction` runs and every `attention_depth` run trained as many steps, named for
    tables; with `longer`, only the runs trained longer than that (the dropout models given more time)."""
    steps = induction["two_layer"].config.steps
    models = [] if longer else [DepthModel(f"{n} layer{'s' if n > 1 else ''}", n, 0.0, 0, induction[label])
                                for n, label in ((1, "one_layer"), (2, "two_layer"))]
    for label, entry in depth.entries.items():
        c = entry.config
        if (c.steps > steps) != longer:
            continue
        name = f"{c.n_layers} layers{', dropout' if c.dropout else ''}{f', {c.steps} steps' if longer else ''}, seed {c.seed}"
        models.append(DepthModel(name, c.n_layers, c.dropout, c.seed, entry))
    return models


def analysis_batch(entry: RunEntry, n: int = 256):
    """One fixed batch for every model (the evaluation stream of seed 0): the same data under every comparison."""
    return fixed_eval_batch(entry.config, n)


@torch.no_grad()
def loss_table(models: list[DepthModel]) -> pd.DataFrame:
    """Mean loss per model and region on the shared batch (nats), with the number of targets in each region."""
    batch = analysis_batch(models[0].entry)
    masks = region_masks(batch)
    rows = []
    for m in models:
        losses = next_token_losses(m.model(), batch.tokens)                   # (B, T-1)
        for region, value in region_losses(losses, masks).items():
            rows.append({"model": m.name, "layers": m.n_layers, "dropout": m.dropout, "seed": m.seed,
                         "region": region, "loss": value, "targets": int(masks[region].sum())})
    return pd.DataFrame(rows)


def head_contribution(model, z: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """What one head writes to the residual stream, (B, T, d_model), from its `hook_z` (B, T, H, d_head)."""
    return z[:, :, head] @ model.W_O[layer, head]


@torch.no_grad()
def _losses(model, tokens: torch.Tensor, hooks: list) -> torch.Tensor:
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks) if hooks else model(tokens)
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")


@torch.no_grad()
def _losses_from_final(model, tokens: torch.Tensor, final_resid: torch.Tensor) -> torch.Tensor:
    """The loss (B, T-1) with the final residual stream (B, T, d_model) replaced: what a hook there gives, without
    running the layers again (nothing after the last block but the final norm and the unembedding)."""
    logits = model.hook_unembed(model.unembed(model.ln_final(final_resid)))
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")


@torch.no_grad()
def head_effects(model, tokens: torch.Tensor, masks: dict[str, torch.Tensor],
                 ablated: tuple[int, int] | None = None) -> pd.DataFrame:
    """Per head and region: the loss rise when the head is zeroed (total) and when only its direct write to the
    final residual stream is removed (direct). With `ablated`, everything is measured with that head zeroed
    (the direct effects of the heads that take over its work grow)."""
    base_hooks = [(f"blocks.{ablated[0]}.attn.hook_z", ablate_head_hook(ablated[1]))] if ablated else []
    cache: dict[int, torch.Tensor] = {}
    keep = lambda layer: capture_hook(cache, layer)

    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    # the ablation hook runs before the caching ones, so the cache holds what the ablated model computes
    clean = _losses(model, tokens, base_hooks + [(f"blocks.{l}.attn.hook_z", keep(l)) for l in range(n_layers)]
                    + [(f"blocks.{n_layers - 1}.hook_resid_post", keep("final"))])
    base = region_losses(clean, masks)
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            if ablated == (layer, head):
                continue
            total = region_losses(_losses(model, tokens, base_hooks + [(f"blocks.{layer}.attn.hook_z",
                                                                        ablate_head_hook(head))]), masks)
            contribution = head_contribution(model, cache[layer], layer, head)
            direct = region_losses(_losses_from_final(model, tokens, cache["final"] - contribution), masks)
            for region in masks:
                rows.append({"layer": layer, "head": head, "label": f"L{layer}H{head}", "region": region,
                             "total": total[region] - base[region], "direct": direct[region] - base[region]})
    return pd.DataFrame(rows)


def main_head(effects: pd.DataFrame, n_layers: int, region: str = "repeat, unambiguous") -> str:
    """The head outside the last layer with the largest direct effect on the repeat loss: the one whose loss the
    later layers could make up for (a last-layer head has nothing downstream)."""
    rows = effects[(effects.region == region) & (effects.layer < n_layers - 1)]
    return str(rows.sort_values("direct").iloc[-1].label)


def backup_row(m: DepthModel, effect: pd.DataFrame, tokens: torch.Tensor, masks: dict[str, torch.Tensor],
               region: str = "repeat, unambiguous") -> dict:
    """Zero the model's main head (`main_head`) and compare its total effect with its direct one: the share of the
    direct effect the rest makes up (self-repair; negative when the rest amplifies the loss), and the head whose
    own direct effect grows most with it gone (a backup head only if that growth is positive)."""
    main = main_head(effect, m.n_layers, region)
    head = effect[(effect.label == main) & (effect.region == region)].iloc[0]
    after = head_effects(m.model(), tokens, masks, ablated=(int(head.layer), int(head["head"])))
    before = effect[effect.region == region].set_index("label").direct
    grown = (after[after.region == region].set_index("label").direct - before.drop(main)).sort_values()
    return {"model": m.name, "dropout": m.dropout, "main head": main, "direct": head.direct, "total": head.total,
            "share made up": (head.direct - head.total) / head.direct, "backup head": grown.index[-1],
            "its direct effect grows by": grown.iloc[-1]}


def induction_scores(model, entry: RunEntry) -> pd.DataFrame:
    """Previous-token and induction score of every head on the [r, r] probe of the induction page."""
    config = entry.config
    return head_scores_table(model, score_tokens(config), config.score_half)


# Runs over training (the dropout experiments, which store head scores at every checkpoint)

def repeat_curve(entry: RunEntry, **labels) -> pd.DataFrame:
    """A stored run's repeat loss at every evaluation, with `labels` as constant columns (to chart runs together)."""
    return entry.table("evals")[["step", "loss_repeat"]].assign(**labels)


def step_below_or_never(entry: RunEntry, level: float = 2.0) -> float:
    """The first evaluation at which the repeat loss is below `level`; infinity if it never is."""
    step = first_step_below(entry.table("evals"), "loss_repeat", level)
    return float("inf") if pd.isna(step) else float(step)


def best_by_step(entry: RunEntry) -> pd.DataFrame:
    """A stored run's best previous-token and induction scores of any head, one row per checkpoint."""
    return entry.table("scores").groupby("step")[["previous_token", "induction"]].max()


def best_scores_by_step(scores: pd.DataFrame) -> pd.DataFrame:
    """Stored head scores (a row per run, step and head) -> the best of any head per run, step and score, long (for
    charts: columns run, step, score, best)."""
    return (scores.groupby(["run", "step"])[["previous_token", "induction"]].max().reset_index()
            .melt(id_vars=["run", "step"], var_name="score", value_name="best")
            .replace({"score": {"previous_token": "previous-token", "induction": "induction"}}))


def regions_by_step(entry: RunEntry) -> pd.DataFrame:
    """A run's loss by region at every checkpoint (its `checkpoint_regions`), one row per step, and the ambiguity
    cost: the loss on ambiguous repeat targets minus that on unambiguous ones."""
    regions = entry.table("checkpoint_regions").pivot(index="step", columns="region", values="loss")
    return regions.assign(cost=regions["repeat, ambiguous"] - regions["repeat, unambiguous"])


def first_formed(best: pd.DataFrame, level: float = 0.5) -> float:
    """The first checkpoint (the index) at which every best score (column) is `level` or more; NaN if none is: where
    a run forms the induction circuit (a previous-token head and an induction head)."""
    return best[(best >= level).all(axis=1)].index.min()
