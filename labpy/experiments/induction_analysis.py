"""What the induction-heads pages compute from the store: head scores over training, the phase change in the
repeat loss, the ablation of the previous-token head, and every number their predictions and claims use.

`experiments/induction-heads.qmd` and `papers/induction-heads.qmd` read these; the training code is
`induction.py`. Cheap: forward passes over stored checkpoints.
"""

from __future__ import annotations

from itertools import chain, combinations

import pandas as pd
import torch

from ..interp.capture import attention_patterns
from ..interp.heads import (ablate_head_hook, duplicate_token_scores, entropy_bits, first_token_scores,
                            head_scores_table, induction_scores, patterns_with_head_ablated, previous_token_scores)
from ..models.toy import load_toy_transformer
from ..store import RunEntry
from ..tasks.repeated_tokens import sample
from ..train import step_generator
from .induction import EVAL_SEED, copy_losses, next_token_losses, score_tokens


def load_model(entry: RunEntry, step: int | None = None):
    """The stored model at a training step (default: the last checkpoint)."""
    config = entry.config
    step = entry.checkpoint_steps()[-1] if step is None else step
    return load_toy_transformer(config.model_config(), entry.step_checkpoint(step))


def head_scores_over_training(entry: RunEntry) -> pd.DataFrame:
    """Previous-token and induction score of every head at every stored checkpoint."""
    config = entry.config
    tokens = score_tokens(config)
    frames = []
    for step in entry.checkpoint_steps():
        table = head_scores_table(load_model(entry, step), tokens, config.score_half)
        frames.append(table.assign(step=step))
    return pd.concat(frames, ignore_index=True)


def phase_change(evals: pd.DataFrame, column: str = "loss_repeat") -> dict[str, float]:
    """Locate the drop of a loss curve: start (10% of the fall done), middle (50%), end (90%).

    The curve is smoothed with a centred rolling median (5 evals) so a single noisy eval cannot fake a drop.
    The fall is measured from the early plateau (max of the smoothed curve over the first quarter) to the end.
    """
    smooth = evals[column].rolling(5, center=True, min_periods=1).median()
    steps = evals["step"].to_numpy()
    quarter = max(1, len(smooth) // 4)
    high, low = float(smooth.iloc[:quarter].max()), float(smooth.iloc[-5:].mean())
    fall = high - low
    after_peak = smooth.iloc[int(smooth.iloc[:quarter].to_numpy().argmax()):]

    def crossing(fraction: float) -> float:
        below = after_peak[after_peak <= high - fraction * fall]
        return float(steps[below.index[0]]) if len(below) else float("nan")

    start, middle, end = crossing(0.1), crossing(0.5), crossing(0.9)
    return {"plateau_loss": high, "final_loss": low, "fall": fall, "start_step": start, "middle_step": middle,
            "end_step": end, "width_steps": end - start, "total_steps": float(steps[-1])}


def first_crossing(scores: pd.DataFrame, column: str, threshold: float = 0.4) -> float:
    """First checkpoint step at which the best head's `column` score exceeds `threshold` (NaN if never)."""
    best = scores.groupby("step")[column].max()
    above = best[best > threshold]
    return float(above.index[0]) if len(above) else float("nan")


def ablation_table(entry: RunEntry) -> pd.DataFrame:
    """Induction score of the strongest layer-1 induction head: intact, and with each layer-0 head zero-ablated."""
    config = entry.config
    model, tokens = load_model(entry), score_tokens(config)
    scores = head_scores_table(model, tokens, config.score_half)
    top = scores[scores.layer == config.n_layers - 1].sort_values("induction").iloc[-1]
    rows = [{"ablated": "none", "induction_score": float(top.induction)}]
    for head in range(config.n_heads):
        patterns = patterns_with_head_ablated(model, tokens, layer=0, head=head)
        score = induction_scores(patterns, config.score_half)[int(top["layer"]), int(top["head"])].item()
        prev = float(scores[(scores.layer == 0) & (scores["head"] == head)].previous_token.iloc[0])
        rows.append({"ablated": f"L0H{head}", "induction_score": score, "ablated_head_previous_token_score": prev})
    return pd.DataFrame(rows).assign(induction_head=top.label)


def steepest_fall(evals: pd.DataFrame, window: int, column: str = "loss_repeat") -> dict[str, float]:
    """The largest drop of `column` over any `window` steps (in eval-step units), and where it ends."""
    per_eval = max(1, round(window / float(evals.step.diff().median())))
    fall = (evals[column].shift(per_eval) - evals[column])
    end = int(fall.idxmax())
    return {"fall": float(fall.max()), "end_step": float(evals.step[end]), "window": float(window)}


@torch.no_grad()
def loss_by_earlier_occurrence(entry: RunEntry) -> pd.DataFrame:
    """Mean loss on targets outside the repeat, split by whether the target token already occurred earlier.

    Outside the repeat every token is random, so an ideal model scores ln V on both groups. A model that has
    learned "predict tokens already in the context" scores lower on the seen group and higher on the unseen.
    """
    config = entry.config
    batch = sample(config.task(), config.eval_batch, step_generator(EVAL_SEED, config.seed))
    _, repeat = batch.target_masks()
    losses = next_token_losses(load_model(entry), batch.tokens)            # (B, T-1)
    targets = batch.tokens[:, 1:]                                            # (B, T-1)
    prefix_has = (batch.tokens.unsqueeze(1) == targets.unsqueeze(2))         # (B, T-1, T): target == token s
    causal = torch.arange(batch.tokens.shape[1]).unsqueeze(0) <= torch.arange(targets.shape[1]).unsqueeze(1)
    seen = (prefix_has & causal).any(-1)                                     # token seen at positions <= t-1
    rows = []
    for name, mask in (("seen earlier in the context", seen & ~repeat), ("not seen before", ~seen & ~repeat)):
        rows.append({"target": name, "loss": losses[mask].mean().item(), "count": int(mask.sum())})
    return pd.DataFrame(rows)


def head_summary(scores: pd.DataFrame) -> dict:
    """The strongest induction (last layer) and previous-token (layer 0) heads at the end, and when each kind
    first passed 0.4: the facts the page's prose, the predictions and the paper claims all use."""
    final = scores[scores.step == scores.step.max()]
    last = int(scores.layer.max())
    return {
        "induction_head": final[final.layer == last].sort_values("induction").iloc[-1],
        "prev_head": final[final.layer == 0].sort_values("previous_token").iloc[-1],
        "prev_cross_step": first_crossing(scores[scores.layer == 0], "previous_token"),
        "induction_cross_step": first_crossing(scores[scores.layer == last], "induction"),
    }


def measurements(two: RunEntry, one: RunEntry, scores: pd.DataFrame | None = None,
                 scores_one: pd.DataFrame | None = None, ablation: pd.DataFrame | None = None) -> dict:
    """Every number the predictions and paper claims are checked against (pass what a page already computed)."""
    scores = head_scores_over_training(two) if scores is None else scores
    scores_one = head_scores_over_training(one) if scores_one is None else scores_one
    ablation = ablation_table(two) if ablation is None else ablation
    evals, evals_one = two.table("evals"), one.table("evals")
    drop = phase_change(evals)
    heads = head_summary(scores)
    induction_head, prev_head = heads["induction_head"], heads["prev_head"]
    intact = float(ablation.induction_score.iloc[0])
    ablated = float(ablation[ablation.ablated == prev_head["label"]].induction_score.iloc[0])
    others = ablation[~ablation.ablated.isin(["none", prev_head["label"]])].induction_score
    return {
        **drop,
        "width_fraction": drop["width_steps"] / drop["total_steps"],
        "best_induction": float(induction_head["induction"]),
        "induction_head": induction_head["label"],
        "previous_token_head": prev_head["label"],
        "best_previous_token": float(prev_head["previous_token"]),
        "prev_cross_step": heads["prev_cross_step"],
        "induction_cross_step": heads["induction_cross_step"],
        "induction_intact": intact,
        "induction_ablated": ablated,
        "ablated_fraction_left": ablated / intact,
        "other_ablations_min": float(others.min()),
        "one_layer_best_induction": float(scores_one.induction.max()),
        "one_layer_gap": float(evals_one.loss_first_copy.iloc[-1] - evals_one.loss_repeat.iloc[-1]),
        "one_layer_repeat_loss": float(evals_one.loss_repeat.iloc[-1]),
        "first_copy_loss": float(evals.loss_first_copy.iloc[-1]),
        "repeat_loss": float(evals.loss_repeat.iloc[-1]),
    }


def last_layer_zeroing(entry: RunEntry) -> pd.DataFrame:
    """Every subset of the last layer's heads zeroed together (2^H rows, none first): the rise of the repeat loss
    and the change of the first-copy loss. One head at a time cannot tell a redundant head from an idle one."""
    config = entry.config
    last = config.n_layers - 1
    losses = copy_losses(load_model(entry), config)
    intact_repeat, intact_first = losses([])
    rows = []
    for zeroed in chain.from_iterable(combinations(range(config.n_heads), k) for k in range(config.n_heads + 1)):
        rep, fst = losses([(f"blocks.{last}.attn.hook_z", ablate_head_hook(h)) for h in zeroed])
        rows.append({"zeroed": "+".join(f"L{last}H{h}" for h in zeroed) or "none", "n_zeroed": len(zeroed),
                     "repeat_rise": rep - intact_repeat, "first_copy_change": fst - intact_first})
    return pd.DataFrame(rows)


@torch.no_grad()
def last_layer_roles(entry: RunEntry, zeroing: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every head of the last layer: its scores on the [r, r] probes (induction, previous-token, duplicate-token,
    first-token, and attention entropy over the second copy, in bits), and what zeroing it alone does to the loss
    (`repeat_rise`, `first_copy_change`: the singleton rows of `last_layer_zeroing`, passed in or computed)."""
    config = entry.config
    model, tokens, half = load_model(entry), score_tokens(config), config.score_half
    patterns = attention_patterns(model, tokens)                             # (L, B, H, 2·half, 2·half)
    last = config.n_layers - 1
    scores = {"induction": induction_scores(patterns, half), "previous_token": previous_token_scores(patterns),
              "duplicate_token": duplicate_token_scores(patterns, half), "first_token": first_token_scores(patterns),
              "entropy_second_copy": entropy_bits(patterns[..., half - 1:, :])}   # queries half .. 2·half - 1
    alone = (last_layer_zeroing(entry) if zeroing is None else zeroing).set_index("zeroed")
    return pd.DataFrame([{"label": f"L{last}H{head}", "head": head,
                          **{k: float(v[last, head]) for k, v in scores.items()},
                          "repeat_rise": float(alone.repeat_rise[f"L{last}H{head}"]),
                          "first_copy_change": float(alone.first_copy_change[f"L{last}H{head}"])}
                         for head in range(config.n_heads)])


def median_distance_back(layer0: pd.DataFrame) -> pd.DataFrame:
    """Each head's median look-back in layer 0: the distance by which half its attention is spent, nearest first.

    `layer0` is a `copying_routes.attention_routes` layer-0 table (columns head, back, attention; `back` a digit or
    the far bucket "16 or more", counted here as 16), with or without a step column. One row per (step,) head.
    """
    keys = [c for c in ("step", "head") if c in layer0.columns]
    frame = layer0.assign(distance=[int(b) if b.isdigit() else int(b.split()[0]) for b in layer0.back.astype(str)])
    frame = frame.sort_values(keys + ["distance"])
    frame["spent"] = frame.groupby(keys).attention.cumsum()
    return (frame[frame.spent >= 0.5].groupby(keys, as_index=False).distance.first()
            .rename(columns={"distance": "median_back"}))


def accuracy_over_lengths(by_length: pd.DataFrame, low: int, high: int) -> pd.Series:
    """The repeat's accuracy over segments of `low` to `high` tokens together (each target counted once), per step:
    from a `blurred_circuit_longer` by_length table (step, segment_len, targets, accuracy)."""
    rows = by_length[by_length.segment_len.between(low, high)]
    return (rows.accuracy * rows.targets).groupby(rows.step).sum() / rows.targets.groupby(rows.step).sum()


NEAR_BACK, FAR_BACK = 1, range(6, 16)       # layer 0: the previous token, and the look-back of the blurred route
NEAR_OFFSET, FAR_OFFSETS = 1, range(3, 16)  # layer 1: the answer's own key, and the keys far past the occurrence


def route_strengths(layer0: pd.DataFrame, layer1: pd.DataFrame) -> pd.DataFrame:
    """How far each of the two copying routes has grown, per step: the best head's attention above uniform on the
    induction route's keys (layer 0 one back, layer 1 at +1 from the earlier occurrence) and on the blurred route's
    (layer 0 six to fifteen back, layer 1 +3 to +15), summed over those keys.

    `layer0`, `layer1`: `copying_routes.attention_routes` tables with a step column (back and offset as strings).
    """
    def best(table: pd.DataFrame, column: str, keys) -> pd.Series:
        rows = table[table[column].astype(str).isin([str(k) for k in keys])]
        excess = (rows.attention - rows.uniform).groupby([rows.step, rows["head"]]).sum()
        return excess.groupby(level="step").max()

    return pd.DataFrame({"l0_near": best(layer0, "back", [NEAR_BACK]), "l0_far": best(layer0, "back", FAR_BACK),
                         "l1_near": best(layer1, "offset", [NEAR_OFFSET]),
                         "l1_far": best(layer1, "offset", FAR_OFFSETS)}).reset_index()
