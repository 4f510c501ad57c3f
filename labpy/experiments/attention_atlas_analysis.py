"""Analysis the attention-heads page runs on the stored head scores (cheap: table lookups)."""

from __future__ import annotations

import pandas as pd


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def best_heads(heads: pd.DataFrame, score: str, kind: str, n: int = 3) -> pd.DataFrame:
    """The `n` heads with the highest `score` on `kind` of text."""
    rows = heads[heads.kind == kind].nlargest(n, score)
    return rows.assign(label=[head_label(l, h) for l, h in zip(rows.layer, rows["head"])])


def formation_curves(heads: pd.DataFrame) -> pd.DataFrame:
    """One row per measured step of `attention_formation`: the best previous-token and induction scores of any
    head (with the head holding them) and the heads' mean entropy and first-token share."""
    rows = []
    for step, at in heads.groupby("step"):
        prev, ind = at.loc[at.previous_token.idxmax()], at.loc[at.induction.idxmax()]
        rows.append({"step": step, "best_previous_token": prev.previous_token,
                     "best_previous_head": head_label(int(prev.layer), int(prev["head"])),
                     "best_induction": ind.induction, "best_induction_head": head_label(int(ind.layer), int(ind["head"])),
                     "mean_entropy_bits": at.entropy_bits.mean(), "mean_first_token": at.first_token.mean()})
    return pd.DataFrame(rows)


def first_step_reaching(curve: pd.DataFrame, column: str, fraction: float) -> int:
    """The first step at which `column` reaches `fraction` of its value at the last step."""
    target = fraction * curve[column].iloc[-1]
    return int(curve.step[curve[column] >= target].iloc[0])
