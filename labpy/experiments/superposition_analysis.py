"""What the superposition pages compute from the store: the lowest-loss model of each setting, the layout of
features in a plane, which simple fraction a feature dimensionality sits at, and the discreteness of the
2-feature / 1-neuron phases.

`experiments/superposition.qmd`, `concepts/superposition.qmd` and `papers/toy-models-superposition.qmd` read
these; the training code is `superposition.py`. Everything here is cheap: pandas and numpy over stored tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..toy.superposition import REPRESENTED

# Dimensionalities D_i the experiment page marks: a feature alone (1), the shapes of the paper and two more.
FRACTIONS: dict[str, float] = {"1": 1.0, "3/4": 0.75, "2/3": 2 / 3, "1/2": 0.5, "2/5": 0.4, "1/3": 1 / 3,
                               "1/4": 0.25}
# The paper's sticky fractions, each the D of k features spread evenly over d dimensions (a tight frame: D = d/k).
PAPER_SHAPES: dict[str, float] = {"1 (alone)": 1.0, "3/4 (tetrahedron)": 3 / 4, "2/3 (triangle)": 2 / 3,
                                  "1/2 (digon)": 1 / 2, "2/5 (pentagon)": 2 / 5, "3/8 (square antiprism)": 3 / 8}


def lowest_loss(frame: pd.DataFrame, by: str | Sequence[str]) -> pd.DataFrame:
    """The row with the lowest `loss` in each group of `by` — the model a page draws for a setting, as the paper
    does (of several seeds, the one training served best)."""
    return frame.loc[frame.groupby(by).loss.idxmin()]


def weight_matrix(weights: pd.DataFrame, instance: int) -> np.ndarray:
    """(m, n) W of one stored instance, from a long weights table (instance, hidden, feature, weight)."""
    return weights[weights.instance == instance].pivot(index="hidden", columns="feature", values="weight").to_numpy()


class PlanarLayout(NamedTuple):
    kept: np.ndarray        # (k,) indices of the represented features (‖W_i‖ > threshold)
    norms: np.ndarray       # (n,) ‖W_i‖
    w: np.ndarray           # (2, n) W
    gaps: np.ndarray        # (k,) angles in degrees between neighbouring represented features, going round; empty if k < 2


def planar_layout(weights: pd.DataFrame, instance: int, threshold: float = REPRESENTED) -> PlanarLayout:
    """Norms, and the angles between neighbouring represented features, of one model with m = 2."""
    w = weight_matrix(weights, instance)                                          # (2, n)
    if w.shape[0] != 2:
        raise ValueError(f"instance {instance} has m = {w.shape[0]} hidden dimensions; a planar layout needs 2")
    norms = np.linalg.norm(w, axis=0)
    kept = np.flatnonzero(norms > threshold)
    angles = np.sort(np.degrees(np.arctan2(w[1, kept], w[0, kept])))
    gaps = np.diff(np.r_[angles, angles[0] + 360]) if len(kept) > 1 else np.array([])
    return PlanarLayout(kept, norms, w, gaps)


def antipodal_features(w: np.ndarray, kept: Sequence[int], tolerance_deg: float = 10.0) -> list[int]:
    """The represented features (of `kept`) that have another represented feature pointing the opposite way,
    within `tolerance_deg` of 180°: the members of antipodal pairs. `w` is (m, n), any m."""
    unit = w[:, kept] / np.linalg.norm(w[:, kept], axis=0)                        # (m, k)
    angle = np.degrees(np.arccos(np.clip(unit.T @ unit, -1, 1)))                 # (k, k)
    np.fill_diagonal(angle, 0)
    return [int(i) for i, row in zip(kept, angle) if row.max() >= 180 - tolerance_deg]


def planar_arrows(weights: pd.DataFrame) -> pd.DataFrame:
    """One row per (instance, feature) of models with m = 2: the column W_i as an arrow from the origin (x0, y0)
    to (x, y), beside whatever labels the long table carries (sparsity, replicate, ...)."""
    labels = [c for c in weights.columns if c not in ("hidden", "weight")]
    wide = weights.pivot_table(index=labels, columns="hidden", values="weight").reset_index()
    return wide.rename(columns={0: "x", 1: "y"}).assign(x0=0.0, y0=0.0)


def nearest_fraction(d: float, fractions: Mapping[str, float] = FRACTIONS, within: float = 0.03) -> str:
    """The name of the fraction within `within` of d (the nearest, if several), or "none"."""
    close = {name: abs(d - value) for name, value in fractions.items() if abs(d - value) <= within}
    return min(close, key=close.get) if close else "none"


class Plateau(NamedTuple):
    first: float        # the densest sparsity S of the run
    last: float         # the sparsest
    points: int
    span: float         # (1 − first) / (1 − last): how far the run reaches in 1/(1 − S); 0 when there is none


def longest_plateau(dstar: pd.Series, level: float = 0.5, within: float = 0.05) -> Plateau:
    """The run of consecutive sweep points (index: sparsity S) with D* within `within` of `level` that spans the
    largest factor in 1/(1 − S) — the paper's "sticky" plateau, as wide as the sweep can show it."""
    runs, current = [], []
    for s, near in ((dstar.sort_index() - level).abs() <= within).items():
        current = current + [float(s)] if near else []
        if current:
            runs.append(current)
    if not runs:
        return Plateau(float("nan"), float("nan"), 0, 0.0)
    best = max(runs, key=lambda r: ((1 - r[0]) / (1 - r[-1]), len(r)))
    return Plateau(best[0], best[-1], len(best), (1 - best[0]) / (1 - best[-1]))


def share_near(dims: Sequence[float], fractions: Mapping[str, float] = PAPER_SHAPES, within: float = 0.03) -> float:
    """The share of the dimensionalities `dims` that lie within `within` of one of `fractions`."""
    values = np.asarray(dims, dtype=float)[:, None]                              # (N, 1)
    return float((np.abs(values - np.array(list(fractions.values()))).min(axis=1) <= within).mean())


def uniform_share_near(low: float, high: float, fractions: Mapping[str, float] = PAPER_SHAPES,
                       within: float = 0.03) -> float:
    """The share a D spread uniformly over [low, high] would have within `within` of one of `fractions`: the
    baseline `share_near` must beat before "sticky" means anything (the length of the union of the windows)."""
    windows = sorted((max(v - within, low), min(v + within, high)) for v in fractions.values()
                     if v + within >= low and v - within <= high)
    covered, end = 0.0, low
    for start, stop in windows:
        start = max(start, end)
        if stop > start:
            covered += stop - start
            end = stop
    return covered / (high - low)


def phase_cells(phase: pd.DataFrame) -> pd.DataFrame:
    """The 2-feature / 1-neuron phase diagram: the lowest-loss model of each (density, relative importance)."""
    return lowest_loss(phase, ["density", "relative_importance"])


def off_the_discrete_solutions(cells: pd.DataFrame, tolerance: float = 0.1) -> pd.DataFrame:
    """The cells whose weights are not all-or-nothing: some |w_i| further than `tolerance` from both 0 and 1.

    The paper's analysis of 2 features in 1 neuron compares discrete solutions — W = [1, 0], [0, 1], [1, −1] (or
    [−1, 1]) — and a phase change is a jump between them; a cell between them would be a smooth cross-over."""
    w = cells[["w1", "w2"]].abs().to_numpy()                                        # (cells, 2)
    off = np.minimum(w, np.abs(w - 1)) > tolerance
    return cells[off.any(axis=1)]
