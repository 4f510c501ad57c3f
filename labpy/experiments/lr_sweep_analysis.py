"""What the learning-rate pages compute from the store: final losses per run and seed, loss spikes, and every
number the learning-rate page checks its predictions against. The training code is `lr_sweep.py`.
"""

from __future__ import annotations

import math

import pandas as pd


def sweep_table(runs) -> pd.DataFrame:
    """One row per (learning rate, warm-up, seed): final losses and divergence markers."""
    frames = []
    for lab, entry in runs.entries.items():
        frames.append(entry.table("seeds").assign(label=lab, lr=entry.config.lr,
                                                  warmup=entry.config.warmup_steps > 0))
    return pd.concat(frames, ignore_index=True)


def curves_table(runs) -> pd.DataFrame:
    frames = [entry.table("curves").assign(label=lab, lr=entry.config.lr, warmup=entry.config.warmup_steps > 0)
              for lab, entry in runs.entries.items()]
    return pd.concat(frames, ignore_index=True)


def largest_spike(curve: pd.DataFrame, after_step: int) -> float:
    """The largest rise of the (stored, every 5th step) training loss above its running minimum after
    `after_step`: 0 for a curve that only falls, > 1 nat for a loss spike or a divergence."""
    losses = curve[curve.step > after_step].sort_values("step").loss.astype(float)
    if losses.empty:
        return math.nan
    return float((losses - losses.cummin()).max())


def per_run_table(runs) -> pd.DataFrame:
    """`sweep_table` plus the largest loss spike of every run."""
    table = sweep_table(runs)
    curves = curves_table(runs)
    spikes = {(lab, seed): largest_spike(c, runs[lab].config.warmup_steps)
              for (lab, seed), c in curves.groupby(["label", "seed"])}
    table["spike"] = [spikes.get((lab, seed), math.nan) for lab, seed in zip(table.label, table.seed)]
    return table


def sweep_measurements(table: pd.DataFrame) -> dict:
    """Every number the learning-rate page checks its predictions against (warm-up runs unless named)."""
    warm = table[table.warmup]
    by_lr = warm.groupby("lr").agg(loss=("final_val_loss", "mean"), spread=("final_val_loss", lambda x: x.max() - x.min()),
                                   spike=("spike", "max")).sort_index()
    best_lr = float(by_lr.loss.idxmin())
    best = float(by_lr.loss.min())
    lrs = by_lr.index.tolist()
    # the divergence point: the smallest LR above the best whose loss is > 1 nat worse than the best
    bad = [lr for lr in lrs if lr > best_lr and by_lr.loss[lr] - best > 1.0]
    diverge_lr = min(bad) if bad else math.nan
    # a cliff: a neighbouring pair (<= 2.5x apart) going from within 0.3 nats of the best to > 1 nat worse
    cliff = [(a, b) for a, b in zip(lrs, lrs[1:]) if b / a <= 2.5 + 1e-9
             and by_lr.loss[a] - best < 0.3 and by_lr.loss[b] - best > 1.0]
    near = by_lr[by_lr.loss - best < 0.1].index
    nowarm = table[~table.warmup].groupby("lr").final_val_loss.mean()
    stable = by_lr[[lr <= best_lr or not (lr >= diverge_lr) for lr in lrs]]
    return {
        "best_lr": best_lr, "best_loss": best, "smallest_lr": lrs[0], "largest_lr": lrs[-1],
        "loss_smallest_lr": float(by_lr.loss.iloc[0]), "uniform": float(table.initial_loss.mean()),
        "diverge_lr": diverge_lr, "cliff": cliff[0] if cliff else None,
        "basin_width": float(max(near) / min(near)),
        "nowarm_penalty_high": float(nowarm.get(2e-2, math.nan) - by_lr.loss.get(2e-2, math.nan)),
        "nowarm_penalty_low": float(nowarm.get(2e-3, math.nan) - by_lr.loss.get(2e-3, math.nan)),
        "max_seed_spread_stable": float(stable.spread.max()),
        "spike_largest_lr": float(by_lr.spike.iloc[-1]),
        "nonfinite_runs": int(table.nonfinite_at_step.notna().sum()),
    }
