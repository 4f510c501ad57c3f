"""What the learning-rate pages compute from the store: final losses per run and seed, loss spikes, every number
the learning-rate page checks its predictions against, and the best rate fitted per width or length, which both
learning-rate pages (the sweep's, and μP's and the embedding's) read. The training code is `lr_sweep.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import altair as alt
import pandas as pd

from . import batch_lr_analysis
from .lr_width import WIDTH_LRS


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


def sweep_entries_at(runs, lrs: Iterable[float]) -> list:
    """The stored sweep's warm-up runs at the rates `lrs`: the width-64, 200-step column of the width and length
    sweeps."""
    lrs = set(lrs)
    return [e for e in runs.entries.values() if e.config.warmup_steps > 0 and e.config.lr in lrs]


def seeds_by(entries, by: str, value: Callable) -> pd.DataFrame:
    """Every seed's final held-out loss, one row per (run, seed), with the run's rate, its `by` (`value(entry)`) and
    size; `diverged` marks the seeds `fitted_best_lr` leaves out."""
    seeds = pd.concat([e.table("seeds").assign(**{by: value(e)}, lr=e.config.lr, n_params=e.summary["n_params"])
                       for e in entries], ignore_index=True)
    return seeds.assign(diverged=seeds.nonfinite_at_step.notna())


def fits_by_seed(seeds: pd.DataFrame, by: str) -> dict:
    """Each seed's own fitted best rate per `by`: its runs share an initialisation and data order across rates."""
    return {seed: batch_lr_analysis.fitted_best_lr(group, "final_val_loss", by=by)
            for seed, group in seeds.groupby("seed")}


def best_rate_chart(seeds: pd.DataFrame, mean: pd.DataFrame, fit: pd.DataFrame, by: str, color: alt.Color):
    """Final loss against the rate, every seed (points) and the mean (line), a diamond at each fitted best rate."""
    x = alt.X("lr:Q", scale=alt.Scale(type="log"), title="peak learning rate (log)",
              axis=alt.Axis(values=list(WIDTH_LRS), labelExpr="format(datum.value, '~g')"))
    points = alt.Chart(seeds).mark_circle(size=35, opacity=0.5).encode(
        x=x, y=alt.Y("final_val_loss:Q", title="final held-out loss (nats/token)", scale=alt.Scale(zero=False)),
        color=color, tooltip=[by, alt.Tooltip("lr:Q", format="~g"), "seed",
                              alt.Tooltip("final_val_loss:Q", title="final loss", format=".3f")])
    line = alt.Chart(mean).mark_line().encode(x=x, y="final_val_loss:Q", color=color)
    marks = alt.Chart(fit.rename(columns={"best_lr": "lr"})).mark_point(shape="diamond", size=160, filled=True).encode(
        x=x, y="final_val_loss:Q", color=color,
        tooltip=[by, alt.Tooltip("lr:Q", title="fitted best rate", format=".2g")])
    return (points + line + marks).properties(width=520, height=300)


def width_sweep(runs, width_runs) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """`lr_width` with the stored sweep as its width-64 column: every seed's final loss, the fitted best rate per
    width (with the best grid rate, the size, the seeds' spread there and the cost of the grid's highest rate), and
    the seed-mean loss per (width, rate)."""
    seeds = seeds_by([*width_runs.entries.values(), *sweep_entries_at(runs, WIDTH_LRS)], "width",
                     lambda e: e.config.hidden_size)
    fit = batch_lr_analysis.fitted_best_lr(seeds, "final_val_loss", by="width")
    mean = seeds.groupby(["width", "lr"], as_index=False).final_val_loss.mean()
    best_at = mean.loc[mean.groupby("width").final_val_loss.idxmin()].set_index("width")
    fit["best_grid_lr"] = fit.width.map(best_at.lr)
    fit["loss_at_high"] = fit.width.map(mean[mean.lr == max(WIDTH_LRS)].set_index("width").final_val_loss)
    fit["high_cost"] = fit.loss_at_high - fit.final_val_loss
    fit["n_params"] = fit.width.map(seeds.groupby("width").n_params.first())
    fit["spread_at_best"] = [float(seeds[(seeds.width == w) & (seeds.lr == lr)].final_val_loss.agg(
        lambda s: s.max() - s.min())) for w, lr in zip(fit.width, fit.best_grid_lr)]
    return seeds, fit, mean


def length_seeds(runs, length_runs) -> pd.DataFrame:
    """`lr_length`'s seeds with the stored sweep as its 200-step column, one row per (steps, rate, seed)."""
    return seeds_by([*length_runs.entries.values(), *sweep_entries_at(runs, WIDTH_LRS)], "steps",
                    lambda e: e.config.steps)


def least_closed_frozen_seed(diagnosis: pd.DataFrame) -> float:
    """From `high_rate_damage`'s diagnosis: the share of gates that never open in the frozen model's worst layer,
    for the seed where that share is smallest (so every seed has a layer at least this closed)."""
    closed = diagnosis[(diagnosis.state == "frozen") & (diagnosis.measure == "gates never open")]
    return float(closed.groupby("seed").value.max().min())


def carried_cost(mean: pd.DataFrame, fit: pd.DataFrame, by: str, source, target) -> float:
    """What carrying a tuned rate costs: the seed-mean loss at `target` with `source`'s best grid rate, above the
    loss at `target`'s own best grid rate (`mean` and `fit` as `width_sweep` returns them)."""
    best = fit.set_index(by)
    return float(mean.set_index([by, "lr"]).final_val_loss[(target, best.best_grid_lr[source])]
                 - best.final_val_loss[target])
