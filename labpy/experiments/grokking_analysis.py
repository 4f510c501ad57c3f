"""The grokking page's reading of a run: the milestones of training and the early warning, by fixed rules.

The rules were written before any `cpu` run existed, and a warning may use only what a run knows at that epoch
(its own earlier evaluations, never a later checkpoint or a test label): that is open problem 5.4's "without
future information".
"""

from __future__ import annotations

import math

import pandas as pd

MEMORISED_ACC = 0.99      # train accuracy: memorisation is complete
ONSET_ACC = 0.5           # test accuracy: grokking is under way
GROKKED_ACC = 0.99        # test accuracy: grokking is complete
WARN_SHARE_FACTOR = 2.0   # warn when the embedding's top-frequency share reaches twice its value at epoch 0
WARN_RESTRICTED = 0.5     # ... or when the own-restricted training loss falls below half the chance loss


def first_step(frame: pd.DataFrame, condition: pd.Series) -> float:
    """The first step where `condition` holds (NaN if never)."""
    hits = frame.step[condition]
    return float(hits.iloc[0]) if len(hits) else math.nan


def milestones(evals: pd.DataFrame, chance_loss: float) -> dict[str, float]:
    """Epochs of memorisation, the two warnings, grokking's onset and completion, and the warnings' lead times."""
    evals = evals.sort_values("step")
    start_share = float(evals.embed_top_share.iloc[0])
    found = {
        "memorised": first_step(evals, evals.train_acc >= MEMORISED_ACC),
        "warn_share": first_step(evals, evals.embed_top_share >= WARN_SHARE_FACTOR * start_share),
        "warn_restricted": first_step(evals, evals.own_restricted_train_loss < WARN_RESTRICTED * chance_loss),
        "onset": first_step(evals, evals.test_acc >= ONSET_ACC),
        "grokked": first_step(evals, evals.test_acc >= GROKKED_ACC),
    }
    found["lead_share"] = found["onset"] - found["warn_share"]
    found["lead_restricted"] = found["onset"] - found["warn_restricted"]
    return found


def value_at(frame: pd.DataFrame, step: float, column: str) -> float:
    """`column` at the last row at or before `step` (checkpoints and evaluations are on different grids)."""
    before = frame[frame.step <= step]
    return float(before[column].iloc[-1]) if len(before) else math.nan
