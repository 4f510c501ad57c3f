"""The exact 2-feature / 1-neuron loss against sampling, hand computations and a brute-force grid."""

import numpy as np
import pandas as pd
import pytest
import torch

from labpy.toy import two_feature_optimum as tfo
from labpy.toy.superposition import ToyModel, sample_features, toy_loss


def test_relu_moments_match_numerical_integrals():
    v = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    for c, z in [(0.0, 0.3), (0.0, -0.2), (1.5, -0.4), (-1.5, 0.4), (2.0, 0.1), (-0.7, -0.1), (0.8, -1.2)]:
        f = torch.relu(c * v + z)
        m1, m2 = tfo.relu_moments(torch.tensor(c, dtype=torch.float64), torch.tensor(z, dtype=torch.float64))
        assert float(m1) == pytest.approx(float(torch.trapezoid(f, v)), abs=1e-9)
        assert float(m2) == pytest.approx(float(torch.trapezoid(f * f, v)), abs=1e-9)


def test_expected_loss_matches_sampled_training_loss():
    """The training code's own loss on two million sampled inputs: within 4 standard errors."""
    w = torch.tensor([[1.044, -0.815], [0.3, 0.7], [1.0, -1.0], [0.9, 0.2]], dtype=torch.float64)
    b = torch.tensor([[0.023, 0.11], [-0.1, 0.2], [0.0, 0.0], [0.05, -0.3]], dtype=torch.float64)
    p = torch.tensor([0.398, 0.5, 0.158, 1.0], dtype=torch.float64)
    importance = torch.tensor([[1, 0.373], [1, 2.0], [1, 10.0], [1, 0.7]], dtype=torch.float64)
    model = ToyModel(4, 2, 1).double()
    with torch.no_grad():
        model.W.copy_(w[:, None, :])
        model.b.copy_(b)
        x = sample_features(2_000_000, p[:, None].expand(4, 2), torch.Generator().manual_seed(0))
        per_input = (importance[:, None, :] * (x - model(x)) ** 2).mean(-1)              # (4, B)
        assert torch.allclose(per_input.mean(1), toy_loss(model, x, importance))
    exact = tfo.expected_loss(w, b, p, importance, points=400)
    error = per_input.std(1) / per_input.shape[1] ** 0.5
    assert ((exact - per_input.mean(1)).abs() < 4 * error).all(), (exact, per_input.mean(1), error)


def test_the_32_point_rule_is_within_half_a_percent_of_a_fine_one():
    w = torch.tensor([[1.044, -0.815], [1.01, -0.28], [0.755, -0.755], [1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.024, 0.116], [0.046, 0.348], [0.05, 0.05], [0.0, 0.2]], dtype=torch.float64)
    p = torch.tensor([0.398, 0.578, 0.706, 0.3], dtype=torch.float64)
    importance = torch.tensor([[1, 0.373], [1, 0.72], [1, 1.0], [1, 0.5]], dtype=torch.float64)
    coarse, fine = (tfo.expected_loss(w, b, p, importance, points=n) for n in (32, 2000))
    assert ((coarse - fine).abs() / fine < 5e-3).all(), (coarse, fine)


def test_hand_computed_losses():
    one = torch.ones((), dtype=torch.float64)
    p, r = 0.3, 0.6
    importance = torch.tensor([1.0, r], dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    # nothing represented: each feature's error is E[x²] = p/3
    assert float(tfo.expected_loss(zero, zero, p * one, importance)) == pytest.approx((1 + r) * p / 3 / 2)
    # feature 1 exactly, feature 2 dropped: only feature 2's p/3, weighted by r
    w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert float(tfo.expected_loss(w, zero, p * one, importance)) == pytest.approx(r * p / 3 / 2)
    # dense: the best bias for a dropped feature is its mean, 1/2, leaving its variance 1/12
    assert float(tfo.expected_loss(w, torch.tensor([0.0, 0.5], dtype=torch.float64), one, importance)) == \
        pytest.approx(r / 12 / 2)


def test_swapping_the_features_is_the_same_problem():
    """L(w1, w2, b1, b2; importances 1, r) = r · L(w2, w1, b2, b1; 1, 1/r)."""
    w = torch.tensor([1.02, -0.8], dtype=torch.float64)
    b = torch.tensor([0.03, 0.1], dtype=torch.float64)
    p, r = torch.tensor(0.4, dtype=torch.float64), 0.373
    left = tfo.expected_loss(w, b, p, torch.tensor([1, r], dtype=torch.float64))
    right = tfo.expected_loss(w.flip(0), b.flip(0), p, torch.tensor([1, 1 / r], dtype=torch.float64))
    assert float(left) == pytest.approx(r * float(right), rel=1e-12)


def test_minimise_finds_the_dense_answer_and_a_gradient_of_zero():
    found = tfo.minimise([1.0, 1.0], [0.1, 10.0])
    assert found.phase.tolist() == ["feature 1 only", "feature 2 only"]
    assert found.loss.tolist() == pytest.approx([0.1 / 24, 1 / 24], rel=1e-6)
    assert (found.gradient < 1e-6).all()


def test_no_point_of_a_brute_force_grid_beats_the_minimum():
    """Every (w1, w2, b1, b2) on a grid, against the minimiser, at cells where two or three local minima compete:
    near the jump at r = 0.72 (where a small pair, the one-feature solution and a lopsided pair are within
    0.5%), a lopsided cell, and a one-feature cell."""
    cells = [(0.5776, 0.72), (0.398, 0.373), (0.2, 0.1), (0.8, 0.193)]
    found = tfo.minimise([d for d, _ in cells], [r for _, r in cells])
    w1, w2 = torch.linspace(0, 1.2, 25, dtype=torch.float64), torch.linspace(-1.2, 1.2, 49, dtype=torch.float64)
    bias = torch.linspace(-0.2, 0.6, 33, dtype=torch.float64)
    grid = torch.cartesian_prod(w1, w2, bias, bias)                                  # (N, 4)
    for (density, r), row in zip(cells, found.itertuples()):
        importance = torch.tensor([1.0, r], dtype=torch.float64)
        best = float(tfo.expected_loss(torch.tensor([row.w1, row.w2]), torch.tensor([row.b1, row.b2]),
                                       torch.tensor(density), importance, points=32))
        lowest = min(float(tfo.expected_loss(chunk[:, :2], chunk[:, 2:], torch.tensor(density), importance,
                                             points=32).min()) for chunk in grid.split(100_000))
        assert best <= lowest * (1 + 1e-6), (density, r, best, lowest)   # a missed basin costs ≥ 1e-4


def test_density_sweep_refines_the_largest_step():
    sweep = tfo.density_sweep([0.373], points=12, refine=5)
    coarse, refined = sweep[sweep.grid == "coarse"], sweep[sweep.grid == "refined"]
    assert len(coarse) == 12 and len(refined) == 5
    k = int(np.abs(np.diff(coarse.weaker.to_numpy())).argmax())
    assert (refined.density < coarse.density.iloc[k]).all() and (refined.density > coarse.density.iloc[k + 1]).all()
    steps = tfo.largest_steps(sweep).iloc[0]
    assert steps.coarse_step == pytest.approx(np.abs(np.diff(coarse.weaker.to_numpy())).max())
    above = sweep[sweep.density == steps.density_above].weaker.iloc[0]
    below = sweep[sweep.density == steps.density_below].weaker.iloc[0]
    assert steps.density_above > steps.density_below and steps.refined_step == pytest.approx(abs(above - below))


def test_at_equal_importance_the_weaker_weight_is_the_smaller_one():
    """At r = 1 the minimum comes in mirror pairs, so which feature ends up stronger is arbitrary."""
    found = tfo.minimise([0.5, 0.5], [1.0, 0.9]).iloc[0]
    assert found.weaker == pytest.approx(min(abs(found.w1), abs(found.w2)))


def test_readable_steps_names_columns_and_keeps_close_densities_apart():
    steps = pd.DataFrame({"relative_importance": [0.1], "coarse_step": [0.65], "refined_step": [0.64],
                          "density_above": [0.18143], "density_below": [0.18089], "weaker_above": [0.0],
                          "weaker_below": [0.64]})
    table = tfo.readable_steps(steps, 60, "|w₂|")
    assert list(table.columns) == ["r", "largest step, 60 densities", "largest step, refined", "between density",
                                   "and density", "|w₂| before", "|w₂| after"]
    assert table["between density"][0] == "0.1814" and table["and density"][0] == "0.1809"


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"density \[0.0\]"):
        tfo.minimise([0.0], [1.0])
    with pytest.raises(ValueError, match=r"relative importances \[2.0\]"):
        tfo.density_sweep([2.0])


def test_with_zero_bias_the_antipodal_length_is_the_hand_computed_one():
    # b = 0: per feature pq(1 − s)²/3 + p²(s²/12 − s/4) + const in s = |w|², so s = 1 + p / (8 − 6p)
    for p in (0.001, 0.05, 0.25, 0.4):
        assert tfo.antipodal_length(p) == pytest.approx(np.sqrt(1 + p / (8 - 6 * p)), abs=1e-7)
    assert tfo.antipodal_length(0.25, bias=0.05) < tfo.antipodal_length(0.25)     # a positive bias shortens it


def test_the_pair_balances_slopes_and_curvatures_are_the_exact_losses():
    """The hand computation's expansion of the antipodal pair's loss around |w|² = 1, b = 0 (superposition page):
    gradient (−p²/12, −p²/3) and Hessian [[2pq/3 + p²/6, pq + p²/3], [pq + p²/3, 2q]] in (t = |w|² − 1, b),
    against autograd on the exact loss. b is taken just above 0, where ReLU(b)² has its one-sided curvature."""
    for p in (0.05, 0.25, 0.4):
        q = 1 - p

        def loss(tb: torch.Tensor) -> torch.Tensor:
            w = torch.sqrt(1 + tb[0])
            return tfo.expected_loss(torch.stack([w, -w]), torch.stack([tb[1], tb[1]]),
                                     torch.tensor(p, dtype=torch.float64), torch.ones(2, dtype=torch.float64),
                                     points=400)

        at = torch.tensor([0.0, 1e-9], dtype=torch.float64)
        gradient = torch.autograd.functional.jacobian(loss, at)
        hessian = torch.autograd.functional.hessian(loss, at)
        assert gradient.tolist() == pytest.approx([-p * p / 12, -p * p / 3], rel=1e-3, abs=1e-7)
        expected = [[2 * p * q / 3 + p * p / 6, p * q + p * p / 3], [p * q + p * p / 3, 2 * q]]
        assert hessian.tolist()[0] == pytest.approx(expected[0], rel=2e-3)
        assert hessian[1, 0].item() == pytest.approx(expected[1][0], rel=2e-3)
        assert hessian[1, 1].item() == pytest.approx(expected[1][1], rel=1e-2)
