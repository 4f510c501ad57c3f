"""What the batch-size page computes from the store: the LR grid, the best LR per batch size and the scaling
exponent, and the examples a run needs to reach a loss. The training code is `batch_lr.py`.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from .registry import StoredRuns


def grid_table(runs: StoredRuns) -> pd.DataFrame:
    return pd.concat([e.table("grid") for label, e in runs.entries.items() if label != "noise"], ignore_index=True)


def best_lrs(grid: pd.DataFrame, metric: str = "final_source") -> pd.DataFrame:
    """Per batch size: the LR with the lowest seed-mean loss, that loss, and the seed spread at that LR."""
    ok = grid[~grid.diverged.astype(bool)]
    mean = ok.groupby(["batch_size", "lr"])[metric].agg(["mean", "std", "count"]).reset_index()
    best = mean.loc[mean.groupby("batch_size")["mean"].idxmin()]
    return best.rename(columns={"mean": metric, "std": f"{metric}_seed_std", "lr": "best_lr"}).reset_index(drop=True)


def scaling_exponent(best: pd.DataFrame, by: str = "batch_size") -> float:
    """Slope of log(best LR) against log(`by`): against the batch size, 1 for the linear rule and 0.5 for
    square-root scaling; against the width, -1 for μP's 1/width."""
    x = torch.tensor(best[by].to_numpy(), dtype=torch.float64).log()
    y = torch.tensor(best.best_lr.to_numpy(), dtype=torch.float64).log()
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def fitted_best_lr(grid: pd.DataFrame, metric: str = "final_source", by: str = "batch_size") -> pd.DataFrame:
    """Per value of `by` (the batch size, a width), the best LR between grid points: the vertex of a parabola in
    log(LR) through the best grid LR and its two neighbours (the grid LR itself when the best sits at an edge of
    the grid)."""
    ok = grid[~grid.diverged.astype(bool)]
    rows = []
    for batch, group in ok.groupby(by):
        mean = group.groupby("lr")[metric].mean().sort_index()
        i = int(mean.to_numpy().argmin())
        lr, at_edge = float(mean.index[i]), i in (0, len(mean) - 1)
        if not at_edge:
            x = torch.tensor(mean.index[i - 1:i + 2].to_numpy(), dtype=torch.float64).log()
            y = torch.tensor(mean.iloc[i - 1:i + 2].to_numpy(), dtype=torch.float64)
            a, b, _ = torch.linalg.solve(torch.stack([x**2, x, torch.ones(3, dtype=torch.float64)], 1), y).tolist()
            if a > 0:
                lr = math.exp(-b / (2 * a))
        rows.append({by: batch, "best_lr": lr, "at_edge": at_edge, metric: float(mean.iloc[i])})
    return pd.DataFrame(rows)


def examples_to_reach(curve: pd.DataFrame, batch_size: int, target: float, column: str = "loss_source") -> float:
    """Training examples a run needed to first reach `target` held-out loss, interpolating linearly between
    evals (`curve`: step and loss, one run or a seed mean); NaN if it never got there."""
    steps, loss = curve.step.to_numpy(dtype=float), curve[column].to_numpy(dtype=float)
    for i in range(1, len(loss)):
        if loss[i] <= target:
            t = (loss[i - 1] - target) / (loss[i - 1] - loss[i]) if loss[i - 1] != loss[i] else 1.0
            return float((steps[i - 1] + t * (steps[i] - steps[i - 1])) * batch_size)
    return math.nan


def mccandlish_examples_ratio(b_small: float, b_big: float, b_noise: float) -> float:
    """E(b_big)/E(b_small) from E(B) = E_min (1 + B/B_noise): how many more examples the big batch needs for
    the same loss (McCandlish et al. 2018, eq. 2.11)."""
    return (1 + b_big / b_noise) / (1 + b_small / b_noise)
