"""Where copying goes wrong when the current token is ambiguous, on the repeated-segment task.

A repeat target whose current token occurred once before (only in the first copy) is unambiguous; one whose current
token occurred twice or more is ambiguous for an induction head that matches the current token alone: the keys right
after each earlier occurrence (the candidates) all look alike to it, and only the token before the current one picks
out the right candidate. These measure the loss by region and, per head, how much attention lands on the candidates
and how much of that on the right one. Used by the attention-depth page and by `route_ambiguity`'s training runs.
"""

from __future__ import annotations

import pandas as pd
import torch

from .capture import attention_patterns

REGIONS = ("first copy", "repeat, unambiguous", "repeat, ambiguous")


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
