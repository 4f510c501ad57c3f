"""superposition_variants: the cross-class interference against a hand computation and D_i, the log-spaced sweep,
and the two-sparsity model's classes."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from labpy.experiments.registry import RunContext, get_experiment
from labpy.experiments.superposition_variants import SuperpositionVariantsConfig, log_spaced_sparsities
from labpy.toy.superposition import feature_dimensionality, feature_norms, interference


def test_interference_by_hand_and_against_dimensionality():
    # three features in the plane: e1, 2 e2 and (1, 1)
    W = torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 1.0]])                                      # (m=2, n=3)
    only_third = torch.tensor([False, False, True])
    # feature 0: (e1 · (1, 1))² = 1; feature 1: (e2 · (1, 1))² = 1; feature 2 is the source itself: 0
    assert interference(W, only_third).tolist() == pytest.approx([1.0, 1.0, 0.0])
    first_two = torch.tensor([True, True, False])
    # feature 2: ((1,1)/√2 · e1)² + ((1,1)/√2 · 2 e2)² = 1/2 + 2
    assert interference(W, first_two)[2].item() == pytest.approx(2.5)
    everyone = torch.ones(3, dtype=torch.bool)
    expected = feature_norms(W) ** 2 / feature_dimensionality(W) - feature_norms(W) ** 2   # D_i's denominator − ‖W_i‖²
    assert interference(W, everyone).tolist() == pytest.approx(expected.tolist())
    batched = torch.stack([W, 2 * W])
    assert interference(batched, everyone)[1].tolist() == pytest.approx((4 * interference(W, everyone)).tolist())


def test_log_spaced_sparsities_and_bad_config():
    s = log_spaced_sparsities(2.0, 8.0, 3)
    assert s == (0.5, 0.75, 0.875)
    ks = [1 / (1 - x) for x in SuperpositionVariantsConfig().fine_sparsities]
    ratios = np.diff(np.log(ks))
    assert ks[0] == pytest.approx(1.5, rel=1e-3) and ks[-1] == pytest.approx(12.5, rel=1e-3)
    assert ratios.max() - ratios.min() < 1e-3                      # even steps on a log scale
    assert any(0.6 <= x <= 0.9 for x in SuperpositionVariantsConfig().fine_sparsities)
    with pytest.raises(ValueError, match="fine_low_k"):
        SuperpositionVariantsConfig(fine_low_k=1.0)
    with pytest.raises(ValueError, match="n_hidden"):
        SuperpositionVariantsConfig(n_hidden=20)


def test_smoke_run_classes_and_sweep():
    experiment = get_experiment("superposition_variants")
    config = experiment.configs("smoke")["toy"]
    result = experiment.run(config, RunContext(work_dir=None))
    two = result.tables["two_features"]
    half = config.n_features // 2
    assert set(two[two.feature < half].feature_class) == {"A (dense)"}
    assert (two[two.feature < half].density == config.dense_density).all()
    assert sorted(two[two.feature >= half].density.unique()) == pytest.approx(sorted(config.sparse_densities))
    # D_i = ‖W_i‖² / (‖W_i‖² + interference from everyone else), rebuilt from the two classes' parts
    rebuilt = two.norm ** 2 / (two.norm ** 2 + two.from_class_a + two.from_class_b)
    assert np.allclose(rebuilt, two.dimensionality, atol=1e-4)
    fine = result.tables["fine_instances"]
    assert len(fine) == config.fine_points * len(config.importance_decays) * config.replicates
    assert set(fine.importance_decay) == set(config.importance_decays)
    assert not math.isnan(result.summary["seconds_per_part"]["two sparsities"])


def test_longest_plateau_by_hand():
    from labpy.experiments.superposition_analysis import longest_plateau
    dstar = pd.Series({0.0: 1.0, 0.5: 0.52, 0.6: 0.49, 0.7: 0.7, 0.75: 0.5, 0.8: 0.46, 0.9: 0.5, 0.95: 0.3})
    plateau = longest_plateau(dstar.sample(frac=1, random_state=0))          # order of the index does not matter
    # runs near 1/2: [0.5, 0.6] spans (1 − 0.5)/(1 − 0.6) = 1.25; [0.75, 0.8, 0.9] spans 0.25/0.1 = 2.5
    assert (plateau.first, plateau.last, plateau.points) == (0.75, 0.9, 3)
    assert plateau.span == pytest.approx(2.5)
    assert longest_plateau(pd.Series({0.1: 0.9, 0.2: 0.8})).span == 0.0
    assert longest_plateau(pd.Series({0.3: 0.5})).span == pytest.approx(1.0)


def test_antipodal_partners_by_hand():
    from labpy.toy.superposition import antipodal_partners
    # features: e1, −e1 (a pair), e2, 0.3·(−e2) (too short to count), (−1, −0.1) nearly opposite e1 as well
    W = torch.tensor([[1.0, -1.0, 0.0, 0.0, -1.0], [0.0, 0.0, 1.0, -0.3, -0.1]])
    partners = antipodal_partners(W).tolist()
    assert partners[0] == 1 and partners[1] == 0                 # e1's most opposite represented feature is −e1
    assert partners[2] == -1 and partners[3] == -1               # −0.3 e2 is not represented, so e2 has no partner
    assert partners[4] == 0                                      # cos((−1, −0.1), e1) = −0.995
    assert antipodal_partners(torch.stack([W, W]))[1].tolist() == partners


def test_the_boundary_run_skips_the_fine_sweep():
    experiment = get_experiment("superposition_variants")
    boundary = experiment.configs("cpu")["boundary"]
    assert boundary.fine_sparsities == () and max(boundary.sparse_densities) == boundary.dense_density
    small = dataclasses.replace(experiment.configs("smoke")["toy"], fine_points=0)
    result = experiment.run(small, RunContext(work_dir=None))
    assert set(result.tables) == {"two_features", "two_instances"}
    assert "partner" in result.tables["two_features"]


def test_mutual_pairs_keeps_only_features_that_choose_each_other():
    from labpy.toy.superposition import mutual_pairs
    # 0 <-> 1 mutual; 2 -> 0 but 0 -> 1, so no pair; 3 <-> 4 mutual; 5 has none
    assert mutual_pairs([1, 0, 0, 4, 3, -1]) == [(0, 1), (3, 4)]
    assert mutual_pairs([]) == []
