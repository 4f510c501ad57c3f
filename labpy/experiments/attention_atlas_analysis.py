"""Analysis the attention-heads page runs on the stored head scores (cheap: table lookups)."""

from __future__ import annotations

import pandas as pd


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def best_heads(heads: pd.DataFrame, score: str, kind: str, n: int = 3) -> pd.DataFrame:
    """The `n` heads with the highest `score` on `kind` of text."""
    rows = heads[heads.kind == kind].nlargest(n, score)
    return rows.assign(label=[head_label(l, h) for l, h in zip(rows.layer, rows["head"])])
