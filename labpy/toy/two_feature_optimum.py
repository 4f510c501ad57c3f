"""The exact expected loss of the 2-feature / 1-neuron ReLU output model, and its minimum.

Why: the stored phase diagram is Adam on sampled batches, 4,000 steps from two starts, so a cell's weights say
where training stopped, not where the loss is lowest. With two features and one neuron the expectation over the
data can be written down, so the minimum can be found without sampling noise:

    x̂_i = ReLU(w_i (w_1 x_1 + w_2 x_2) + b_i),    L = ½ Σ_i I_i E[(x_i − x̂_i)²]

(`labpy.toy.superposition.toy_loss`'s scale: the mean over the two features). Each feature is present with
probability p, its value then uniform on [0, 1]. Feature i's term splits by which features are present:
neither (x̂_i = ReLU(b_i)), only its own, only the other, both. Every integral over the *other* feature's value
is of ReLU of a linear function, done exactly; the one left, over x_i's own value, uses Gauss–Legendre
quadrature (32 points, within 0.5% of a 2000-point rule near the minima, and 400 for reported losses;
`tests/test_two_feature_optimum.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .superposition import classify_two_features

# Starts for the minimiser, (w1, w2, b1, b2): antipodal pairs from nearly one-feature to balanced, each with a
# small and a large bias on the weaker feature (near a phase boundary a small pair with a large bias is a basin
# of its own), each way round; the one-feature solutions; a same-sign pair. By the symmetry w -> -w these cover
# the rest. Biases start above 0: a feature with w = 0 and b = 0 sits on the ReLU's kink, where its gradient is
# 0 and it would stay dead.
_SHARES = (0.05, 0.3, 0.7, 1.0)
SWEEP_STARTS = (tuple((1.0, -a, 0.1, b) for a in _SHARES for b in (0.1, 0.4))    # feature 1 the more important
                + ((1.0, 0.0, 0.1, 0.1),))
STARTS = (SWEEP_STARTS + tuple((-a, 1.0, b, 0.1) for a in _SHARES[:-1] for b in (0.1, 0.4))
          + ((0.0, 1.0, 0.1, 0.1), (0.5, 0.5, 0.1, 0.1)))


def _quadrature(points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Legendre nodes and weights on [0, 1], float64: (points,), (points,)."""
    nodes, weights = np.polynomial.legendre.leggauss(points)
    return torch.tensor((nodes + 1) / 2), torch.tensor(weights / 2)


def relu_moments(c: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """∫₀¹ ReLU(c v + z) dv and ∫₀¹ ReLU(c v + z)² dv, elementwise, exactly.

    On the stretch of [0, 1] where f(v) = c v + z > 0 (length ℓ, end values a, b), f is linear, so the two
    integrals are ℓ (a + b)/2 and ℓ (a² + ab + b²)/3. Where f changes sign, one end value is 0 and
    ℓ = (the positive end) / |f(1) − f(0)|; no division by c, so c = 0 needs no special case."""
    f0, f1 = z, c + z
    a, b = torch.relu(f0), torch.relu(f1)
    length = torch.where((f0 > 0) & (f1 > 0), torch.ones_like(a + b),
                         (a + b) / (f0 - f1).abs().clamp_min(1e-300))
    return length * (a + b) / 2, length * (a * a + a * b + b * b) / 3


def expected_loss(w: torch.Tensor, b: torch.Tensor, density: torch.Tensor, importance: torch.Tensor,
                  points: int = 32) -> torch.Tensor:
    """L = ½ Σ_i I_i E[(x_i − x̂_i)²] for weights w (..., 2), biases b (..., 2), density p (...) and importance
    (..., 2) -> (...). Differentiable in w and b."""
    u, weight = _quadrature(points)                                              # (Q,), (Q,): x_i's own value
    p, q = density, 1 - density
    total = torch.zeros(torch.broadcast_shapes(w.shape[:-1], density.shape), dtype=torch.float64)
    for i, j in ((0, 1), (1, 0)):
        own, cross, bias = w[..., i] ** 2, w[..., i] * w[..., j], b[..., i]        # (...)
        z = own[..., None] * u + bias[..., None]                                 # (..., Q): x̂_i before ReLU, x_j = 0
        m1, m2 = relu_moments(cross[..., None], z)                               # (..., Q): moments over x_j
        both = ((u ** 2 - 2 * u * m1 + m2) * weight).sum(-1)                     # E over x_i, x_j
        only_own = (((u - torch.relu(z)) ** 2) * weight).sum(-1)
        only_other = relu_moments(cross, bias)[1]                                # x_i = 0: E[x̂_i²]
        neither = torch.relu(bias) ** 2
        total = total + importance[..., i] * (q * q * neither + p * q * (only_own + only_other) + p * p * both)
    return total / 2


def _losses(x: torch.Tensor, density: torch.Tensor, importance: torch.Tensor, points: int = 32) -> torch.Tensor:
    """Independent problems: x (N, 4) = (w1, w2, b1, b2), density (N,), importance (N,) of feature 2 -> (N,)."""
    return expected_loss(x[:, :2], x[:, 2:], density, torch.stack([torch.ones_like(importance), importance], -1),
                         points=points)


def _gradient_and_hessian(x: torch.Tensor, density: torch.Tensor,
                          importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 4), (N, 4, 4). The problems are independent, so the gradient of the summed loss is every problem's
    gradient, and the gradient of the summed k-th gradient component is every problem's k-th Hessian row."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(_losses(x, density, importance).sum(), x, create_graph=True)
    rows = [torch.autograd.grad(g[:, k].sum(), x, retain_graph=k < 3)[0] for k in range(4)]
    return g.detach(), torch.stack(rows, dim=1)


def _newton(x: torch.Tensor, density: torch.Tensor, importance: torch.Tensor, iterations: int) -> torch.Tensor:
    """Damped Newton (Levenberg–Marquardt) on many independent problems at once: x (N, 4) -> (N, 4).

    Why not Adam: near a phase boundary two or three local minima lie within a fraction of a percent of each
    other, and Adam's step size lets a start hop between basins, so which minimum it reports depends on its
    schedule. Newton goes to the minimum of the start's own basin (a step is kept only if it lowers the loss) and
    converges to a gradient of ~1e-10 in a few dozen steps, so the best over many starts is a fair global one."""
    damping = torch.full((len(x),), 1e-3, dtype=torch.float64)                   # (N,)
    eye = torch.eye(4, dtype=torch.float64)
    with torch.no_grad():
        loss = _losses(x, density, importance)
    for _ in range(iterations):
        g, h = _gradient_and_hessian(x, density, importance)
        with torch.no_grad():
            trial = x - torch.linalg.solve(h + damping[:, None, None] * eye, g)
            trial_loss = _losses(trial, density, importance)
            better = trial_loss < loss
            x = torch.where(better[:, None], trial, x)
            loss = torch.where(better, trial_loss, loss)
            damping = torch.where(better, damping / 3, damping * 4).clamp(1e-9, 1e6)
    return x


def minimise(density: Sequence[float], importance: Sequence[float], iterations: int = 25,
             starts: Sequence[Sequence[float]] = STARTS, cell_starts: torch.Tensor | None = None) -> pd.DataFrame:
    """The lowest expected loss over (w1, w2, b1, b2) for each cell (density[k], relative importance[k] of
    feature 2; feature 1 has importance 1): damped Newton from every start, then the best start by a 400-point
    rule; `cell_starts` (C, K, 4) adds K starts of each cell's own. One row per cell: w1, w2, b1, b2, loss,
    phase (`classify_two_features`' rule), `weaker` (the less important feature's |w|; at r = 1, where the
    features are interchangeable and the minimum comes in mirror pairs, the smaller |w|) and `gradient` (the norm
    of the best point's gradient)."""
    p = torch.tensor(density, dtype=torch.float64)                                # (C,)
    r = torch.tensor(importance, dtype=torch.float64)
    if p.shape != r.shape or ((p <= 0) | (p > 1)).any() or (r <= 0).any():
        raise ValueError(f"density {list(density)} and importance {list(importance)}: give one of each per cell, "
                         "densities in (0, 1] and importances > 0")
    C = len(p)
    start = torch.tensor(starts, dtype=torch.float64).reshape(1, -1, 4).expand(C, -1, 4)   # (C, S, 4)
    if cell_starts is not None:
        start = torch.cat([start, cell_starts.to(torch.float64)], dim=1)
    S = start.shape[1]
    dens, imp = p.repeat_interleave(S), r.repeat_interleave(S)                    # (C·S,)
    x = _newton(start.reshape(C * S, 4), dens, imp, iterations)                   # (C·S, 4)
    with torch.no_grad():
        loss = _losses(x, dens, imp, points=400).reshape(C, S)
    best = x.reshape(C, S, 4)[torch.arange(C), loss.argmin(1)]                    # (C, 4)
    gradient = _gradient_and_hessian(best, p, r)[0].norm(dim=-1)
    frame = pd.DataFrame(best.numpy(), columns=["w1", "w2", "b1", "b2"])
    frame.insert(0, "relative_importance", r.numpy())
    frame.insert(0, "density", p.numpy())
    frame["loss"] = loss.min(1).values.numpy()
    frame["phase"] = classify_two_features(best[:, None, :2])
    frame["weaker"] = np.where(frame.relative_importance > 1, frame.w1.abs(),
                               np.where(frame.relative_importance < 1, frame.w2.abs(),
                                        np.minimum(frame.w1.abs(), frame.w2.abs())))
    frame["gradient"] = gradient.numpy()
    return frame


def exact_loss_of(frame: pd.DataFrame) -> np.ndarray:
    """The exact expected loss (400-point rule) of each row's trained weights: columns density,
    relative_importance, w1, w2, b1, b2 -> (rows,)."""
    t = lambda *cols: torch.tensor(frame[list(cols)].to_numpy(), dtype=torch.float64)
    r = t("relative_importance")[:, 0]
    importance = torch.stack([torch.ones_like(r), r], dim=-1)
    return expected_loss(t("w1", "w2"), t("b1", "b2"), t("density")[:, 0], importance, points=400).numpy()


def antipodal_length(density: float, bias: float = 0.0, points: int = 32) -> float:
    """The length |w| of the best antipodal pair w₁ = −w₂ = |w| with both biases held at `bias`, at equal
    importance, from the exact loss (not from a formula): a bounded one-dimensional search. At bias 0 every term
    is a polynomial in x_i's value, so the 32-point rule is exact there.

    Why: with the bias held at 0 the pair's loss is quadratic in |w|², so a hand computation gives its length at
    every density; this is the number to hold that computation against."""
    from scipy.optimize import minimize_scalar

    def loss(length: float) -> float:
        w = torch.tensor([length, -length], dtype=torch.float64)
        return float(expected_loss(w, torch.full((2,), bias, dtype=torch.float64),
                                   torch.tensor(density, dtype=torch.float64),
                                   torch.ones(2, dtype=torch.float64), points=points))

    return float(minimize_scalar(loss, bounds=(0.5, 1.5), method="bounded", options={"xatol": 1e-12}).x)


def _neighbour_starts(frame: pd.DataFrame) -> torch.Tensor:
    """(C, 3, 4): each cell's own minimum and its two neighbours' (the same cell at either end), within each
    relative importance; `frame` is sorted by importance, then density."""
    groups = []
    for _, group in frame.groupby("relative_importance", sort=False):
        best = torch.tensor(group[["w1", "w2", "b1", "b2"]].to_numpy())                     # (n, 4)
        groups.append(torch.stack([best, torch.cat([best[:1], best[:-1]]), torch.cat([best[1:], best[-1:]])], 1))
    return torch.cat(groups)


def _continued(frame: pd.DataFrame) -> pd.DataFrame:
    """Minimise every cell of `frame` again from its own and its neighbours' minima (continuation: a basin the
    first starts missed at one density is usually found next door)."""
    return minimise(frame.density.to_numpy(), frame.relative_importance.to_numpy(), starts=(),
                    cell_starts=_neighbour_starts(frame))


def density_sweep(importances: Sequence[float], points: int = 60, refine: int = 30,
                  lowest: float = 0.01) -> pd.DataFrame:
    """The minimum at `points` densities spaced evenly in log from 1 to `lowest`, for each relative importance
    up to 1; then `refine` more densities evenly spaced (in log) between the two neighbours where the weaker
    weight changes most, started from the minima on either side. Each grid is minimised a second time from each cell's
    own and its neighbours' minima. Rows as `minimise`'s, with `grid` = "coarse" or "refined"."""
    if max(importances) > 1:
        raise ValueError(f"relative importances {list(importances)}: the sweep follows the less important feature 2, "
                         "so give importances up to 1 (r and 1/r are the same problem with the features swapped)")
    coarse_d = np.geomspace(1.0, lowest, points)
    coarse = _continued(minimise(np.tile(coarse_d, len(importances)), np.repeat(importances, points),
                                 starts=SWEEP_STARTS))
    fine_d, fine_r, brackets = [], [], []
    for r, group in coarse.groupby("relative_importance", sort=False):
        k = int(np.abs(np.diff(group.weaker.to_numpy())).argmax())
        fine_d += list(np.geomspace(coarse_d[k], coarse_d[k + 1], refine + 2)[1:-1])
        fine_r += [r] * refine
        brackets.append(torch.tensor(group[["w1", "w2", "b1", "b2"]].to_numpy()[[k, k + 1]])[None].expand(refine, 2, 4))
    refined = _continued(minimise(fine_d, fine_r, starts=(), cell_starts=torch.cat(brackets)))
    return pd.concat([coarse.assign(grid="coarse"), refined.assign(grid="refined")], ignore_index=True)


def largest_steps(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per relative importance: the largest change of the weaker weight between neighbouring densities on the
    coarse grid, and on coarse and refined points together (the refined ones fill the coarse gap with the
    largest change), with the densities on either side of the latter."""
    rows = []
    for r, group in sweep.groupby("relative_importance", sort=False):
        both = group.sort_values("density", ascending=False)
        coarse = both[both.grid == "coarse"]
        steps = np.abs(np.diff(both.weaker.to_numpy()))
        k = int(steps.argmax())
        rows.append({"relative_importance": r, "coarse_step": float(np.abs(np.diff(coarse.weaker.to_numpy())).max()),
                     "refined_step": float(steps[k]), "density_above": float(both.density.iloc[k]),
                     "density_below": float(both.density.iloc[k + 1]),
                     "weaker_above": float(both.weaker.iloc[k]), "weaker_below": float(both.weaker.iloc[k + 1])})
    return pd.DataFrame(rows)


def readable_steps(steps: pd.DataFrame, points: int, weight: str = "|w|") -> pd.DataFrame:
    """`largest_steps` for a reader: named columns (`points`: the coarse grid's size; `weight`: how the page
    writes the weaker weight), densities as text to 4 decimals so that two close ones do not print alike."""
    return (steps.assign(density_above=steps.density_above.map("{:.4f}".format),
                         density_below=steps.density_below.map("{:.4f}".format))
            .rename(columns={"relative_importance": "r", "coarse_step": f"largest step, {points} densities",
                             "refined_step": "largest step, refined", "density_above": "between density",
                             "density_below": "and density", "weaker_above": f"{weight} before",
                             "weaker_below": f"{weight} after"}))
