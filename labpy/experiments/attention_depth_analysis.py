"""What `experiments/attention-depth.qmd` computes from the stored 1-, 2- and 3-layer attention-only models.

- losses split by how ambiguous a one-token match is: a repeat target whose current token occurred once before
  (only in the first copy) is unambiguous; one whose current token occurred twice or more is ambiguous for an
  induction head that matches one token, and needs the token before it too;
- composition scores (`labpy.interp.composition`), against the same model at initialisation;
- per-head effects on the loss: total (the head's output zeroed, everything downstream recomputed) and direct
  (only the head's own write to the final residual stream removed, everything else as in the clean run). Their
  difference is what the rest of the network makes up for: self-repair, the work of backup heads;
- where each head looks on ambiguous targets: of its attention on the tokens that followed an earlier occurrence of
  the current token, the share on the one the token before the current one picks out (one token or two matched).
All of it is forward passes of stored models on one fixed batch (seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from ..interp.capture import attention_patterns
from ..interp.heads import ablate_head_hook, capture_hook, head_scores_table
from ..store import RunEntry
from ..tasks.repeated_tokens import sample
from ..train import step_generator
from .induction import EVAL_SEED, next_token_losses, score_tokens
from .induction_analysis import load_model
from .registry import StoredRuns

REGIONS = ("first copy", "repeat, unambiguous", "repeat, ambiguous")


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
    return task_batch(entry.config, n)


def task_batch(config, n: int = 256):
    """`analysis_batch` from a config (its task), for a model being trained rather than stored."""
    return sample(config.task(), n, step_generator(EVAL_SEED, 0))


def earlier_matches(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T-1): for the target at t+1, how often the current token (at t) occurred before t."""
    current = tokens[:, :-1]                                                   # (B, T-1)
    same = current.unsqueeze(2) == current.unsqueeze(1)                        # (B, T-1, T-1): [t, s] token t == s
    before = torch.ones(same.shape[1:], dtype=torch.bool).tril(-1)             # s < t
    return (same & before).sum(-1)


def region_masks(batch) -> dict[str, torch.Tensor]:
    """Boolean (B, T-1) masks over targets: the first copy, and the repeat split by one-token ambiguity."""
    first, repeat = batch.target_masks()
    matches = earlier_matches(batch.tokens)
    return {"first copy": first, "repeat, unambiguous": repeat & (matches == 1),
            "repeat, ambiguous": repeat & (matches >= 2)}


def region_losses(losses: torch.Tensor, masks: dict[str, torch.Tensor]) -> dict[str, float]:
    return {region: float(losses[mask].mean()) for region, mask in masks.items()}


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


def occurrence_candidates(batch, target_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                      torch.Tensor]:
    """The query positions of the masked repeat targets and, for each, where an induction head could copy from.

    Returns (b, t, candidates, right): the sequence and query position of each target (N,), a (N, T) mask of the
    candidate keys (every key right after an earlier occurrence of the query's token: what a head matching one token
    attends to) and the right candidate (N,), the key after the first copy's occurrence, t - L + 1, which the token
    before the query picks out among them (what a head matching two tokens attends to)."""
    b, t = target_mask.nonzero(as_tuple=True)                       # the target at t + 1 is predicted at query t
    tokens = batch.tokens                                           # (B, T)
    before_key = torch.cat([torch.full_like(tokens[:, :1], -1), tokens[:, :-1]], 1)   # (B, T): the token before
    keys = torch.arange(tokens.shape[1])
    candidates = (before_key[b] == tokens[b, t].unsqueeze(1)) & (keys.unsqueeze(0) <= t.unsqueeze(1))   # (N, T)
    right = t - batch.segment_len[b] + 1
    if not candidates[torch.arange(len(t)), right].all():
        raise ValueError("a masked target's right candidate is not among its candidates: the mask must cover only "
                         "repeat targets (region_masks' 'repeat, …')")
    return b, t, candidates, right


@torch.no_grad()
def occurrence_shares(model, batch, target_mask: torch.Tensor) -> pd.DataFrame:
    """Per head, over the masked repeat targets (meant for the ambiguous ones): `on candidates`, its mean attention on
    the candidate keys (`occurrence_candidates`), and `right share`, the mean share of that attention on the right
    one. A head matching the current token alone splits its attention evenly over the candidates (`chance`, the mean
    of 1 / candidates); one that also matches the token before puts all of it on the right one. `uniform` is what a
    head spreading its attention evenly over every key up to the query would put on the candidates. `peak` is the
    mean of the row's largest weight: near 1 for a head that looks at one key, small for one spread thinly; where
    that largest weight lies, as medians over the targets: `peak back` keys before the query, `peak past right` keys
    after the right candidate."""
    b, t, candidates, right = occurrence_candidates(batch, target_mask)
    patterns = attention_patterns(model, batch.tokens)              # (n_layers, B, H, T, T)
    n = torch.arange(len(t))
    chance = float((1 / candidates.sum(1)).mean())
    uniform = float((candidates.sum(1) / (t + 1)).mean())
    rows = []
    for layer in range(patterns.shape[0]):
        for head in range(patterns.shape[2]):
            rows_attention = patterns[layer, b, head, t]            # (N, T): each target's query row
            on_candidates = (rows_attention * candidates).sum(1)    # (N,)
            rows.append({"layer": layer, "head": head, "label": f"L{layer}H{head}",
                         "on candidates": float(on_candidates.mean()),
                         "right share": float((rows_attention[n, right] / on_candidates).mean()),
                         "peak": float(rows_attention.max(1).values.mean()),
                         "peak back": float((t - rows_attention.argmax(1)).float().median()),
                         "peak past right": float((rows_attention.argmax(1) - right).float().median()),
                         "chance": chance, "uniform": uniform, "targets": len(t)})
    return pd.DataFrame(rows)
