"""The toy model of superposition and the sparse autoencoder (`labpy.toy`), against hand-computed geometry,
single models trained one by one, autograd of a loss written out by hand, and a decoder built from the answer."""

import math

import numpy as np
import pytest
import torch

from labpy.toy.sae import SparseAutoencoder, evaluate_sae, max_cosine, sae_loss
from labpy.toy.superposition import (ToyModel, classify_two_features, dimensions_per_feature,
                                     feature_dimensionality, sample_features, toy_loss, train_toy)


def columns(*vectors):
    """An m × n matrix W from its columns (the feature directions)."""
    return torch.tensor(vectors, dtype=torch.float32).T


def test_feature_dimensionality_of_known_geometries():
    orthogonal = columns([1, 0, 0], [0, 2, 0], [0, 0, 0.7])
    assert torch.allclose(feature_dimensionality(orthogonal), torch.ones(3))
    antipodal = columns([1, 0], [-1, 0], [0, 1])
    assert torch.allclose(feature_dimensionality(antipodal), torch.tensor([0.5, 0.5, 1.0]))
    angles = 2 * math.pi * torch.arange(5) / 5
    pentagon = torch.stack([angles.cos(), angles.sin()])                     # (2, 5): a regular pentagon
    assert torch.allclose(feature_dimensionality(pentagon), torch.full((5,), 0.4), atol=1e-6)
    # a feature of half length beside a full one, same direction: D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)²
    stacked = columns([1, 0], [0.5, 0])
    assert torch.allclose(feature_dimensionality(stacked), torch.tensor([1 / 1.25, 0.25 / 1.25]))
    assert torch.isnan(feature_dimensionality(columns([1, 0], [0, 0])))[1]  # no direction, no dimensionality
    assert dimensions_per_feature(pentagon).item() == pytest.approx(2 / 5)
    batched = torch.stack([orthogonal[:2, :2], pentagon[:, :2]])            # (..., m, n) broadcasts
    assert feature_dimensionality(batched).shape == (2, 2)


def test_features_are_sparse_uniform_values_with_the_asked_probability():
    probability = torch.tensor([[1.0, 0.3, 0.0], [0.05, 0.5, 0.9]])
    x = sample_features(40_000, probability, torch.Generator().manual_seed(0))         # (I, B, n)
    assert x.shape == (2, 40_000, 3)
    assert torch.allclose((x > 0).float().mean(1), probability, atol=0.01)
    present = x[0, :, 0]
    assert present.min() >= 0 and present.max() < 1 and present.mean().item() == pytest.approx(0.5, abs=0.01)
    assert present.var().item() == pytest.approx(1 / 12, abs=0.003)                      # uniform on [0, 1]
    assert (x[0, :, 2] == 0).all()


def test_batched_training_equals_each_model_trained_alone():
    n, m, steps, batch = 6, 2, 25, 32
    probability = torch.tensor([[0.9] * n, [0.2] * n])
    importance = torch.tensor([[0.9 ** i for i in range(n)], [1.0] * n])
    batched = ToyModel(2, n, m, seed=3)
    start = batched.W.detach().clone()
    train_toy(batched, probability, importance, steps, batch_size=batch, lr=1e-2, seed=7, eval_batch=10)
    for k in range(2):
        single = ToyModel(1, n, m, seed=99)
        with torch.no_grad():
            single.W.copy_(start[k:k + 1])
        optimizer = torch.optim.Adam(single.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(7)                                  # the batched run's stream
        for _ in range(steps):
            x = sample_features(batch, probability, generator)[k:k + 1]               # instance k's own data
            loss = (importance[k] * (x - single(x)) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert torch.allclose(single.W, batched.W[k:k + 1], atol=1e-5)
        assert torch.allclose(single.b, batched.b[k:k + 1], atol=1e-5)


def test_the_toy_loss_is_the_importance_weighted_error():
    model = ToyModel(1, 2, 1, seed=0)
    with torch.no_grad():
        model.W.copy_(torch.tensor([[[1.0, -1.0]]]))
        model.b.copy_(torch.tensor([[-0.2, 0.1]]))
    x = torch.tensor([[[0.5, 0.0], [0.3, 0.8]]])                    # (I=1, B=2, n=2)
    # by hand: x' = ReLU(WᵀW x + b); WᵀW = [[1, -1], [-1, 1]]
    out = [[max(0.5 - 0.2, 0), max(-0.5 + 0.1, 0)], [max(0.3 - 0.8 - 0.2, 0), max(-0.3 + 0.8 + 0.1, 0)]]
    assert torch.allclose(model(x)[0], torch.tensor(out))
    importance = torch.tensor([[1.0, 0.5]])
    by_hand = ((0.5 - 0.3) ** 2 + 0.5 * 0 ** 2 + (0.3 - 0) ** 2 + 0.5 * (0.8 - 0.6) ** 2) / 4
    assert toy_loss(model, x, importance).item() == pytest.approx(by_hand, abs=1e-6)


def test_two_feature_phases_follow_the_stated_rule():
    W = torch.tensor([[[1.0, 0.1]], [[0.9, -1.1]], [[0.0, 1.2]], [[0.2, 0.3]], [[0.8, 0.9]]])   # (I, 1, 2)
    assert classify_two_features(W) == ["feature 1 only", "superposition", "feature 2 only", "neither",
                                        "both, not antipodal"]


def test_sae_loss_and_gradients_match_a_hand_written_reference():
    sae = SparseAutoencoder(2, d_in=2, n_latents=3, seed=0)
    with torch.no_grad():
        sae.b_enc.copy_(torch.tensor([[0.1, -0.2, 0.0], [0.0, 0.3, -0.1]]))
        sae.b_dec.copy_(torch.tensor([[0.05, -0.05], [0.2, 0.0]]))
    h = torch.tensor([[1.0, 0.5], [-0.3, 0.2], [0.0, 0.0], [0.7, -1.1]])                   # (B, m)
    l1 = torch.tensor([0.1, 0.5])
    total, mse, l1_norm = sae_loss(sae, h, l1)

    params = [p.detach().clone().requires_grad_() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]
    W_enc, b_enc, W_dec, b_dec = params
    expected = []
    for k in range(2):                                                          # one SAE at a time, row by row
        losses = []
        for row in h:
            f = torch.relu((row - b_dec[k]) @ W_enc[k] + b_enc[k])
            reconstruction = f @ W_dec[k] + b_dec[k]
            losses.append(((reconstruction - row) ** 2).sum() + l1[k] * f.abs().sum())
        expected.append(torch.stack(losses).mean())
    expected = torch.stack(expected)
    assert torch.allclose(total, expected, atol=1e-6)
    assert torch.allclose(mse + l1 * l1_norm, total)
    total.sum().backward()
    expected.sum().backward()
    for ours, reference in zip((sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec), params):
        assert torch.allclose(ours.grad, reference.grad, atol=1e-6)


def test_an_sae_whose_decoder_is_the_true_features_recovers_them():
    generator = torch.Generator().manual_seed(0)
    truth = torch.nn.functional.normalize(torch.randn(6, 3, generator=generator), dim=-1)    # (n, m)
    sae = SparseAutoencoder(1, d_in=3, n_latents=8, seed=1)
    with torch.no_grad():
        sae.W_dec[0, :6] = truth
        sae.W_enc[0, :, :6] = truth.T
        sae.b_enc.fill_(-0.05)                   # only the 6 true latents can fire on these inputs
        sae.W_enc[0, :, 6:] = 0.0
    x = sample_features(5_000, torch.full((1, 6), 0.3), generator)[0]
    h = x @ truth                                                                            # (N, m)
    scores = evaluate_sae(sae, h, truth).iloc[0]
    assert scores.mmcs == pytest.approx(1.0, abs=1e-6) and scores.recovered_099 == 6
    assert scores.dead == 2                                                                  # the two spare latents
    assert max_cosine(truth[:1], -truth[:1]).item() == pytest.approx(-1.0, abs=1e-6)     # a flipped sign is not found
    assert max_cosine(2 * truth, truth).min().item() == pytest.approx(1.0, abs=1e-6)      # scale does not matter


def test_the_smoke_run_stores_consistent_tables(tmp_store):
    from labpy import results

    entry = results("superposition", "smoke")["toy"]
    config = entry.config
    features, instances = entry.table("sweep_features"), entry.table("sweep_instances")
    assert set(instances.activation) == {"relu", "gelu"}
    assert len(instances) == 2 * len(config.sparsities) * config.replicates
    assert len(features) == len(instances) * config.n_features
    for activation, stored in instances.groupby("activation"):
        counted = features[features.activation == activation].groupby("instance").represented.sum()
        assert (counted.to_numpy() == stored.represented.to_numpy()).all()
    assert (features.represented == (features.norm > 0.5)).all()
    weights = entry.table("geometry_weights")
    per_model = config.geometry_hidden * config.geometry_features
    assert len(weights) == len(config.geometry_sparsities) * config.replicates * per_model
    phase = entry.table("phase")
    assert len(phase) == len(config.phase_densities) * len(config.phase_importances) * config.phase_replicates
    W = torch.tensor(phase[["w1", "w2"]].to_numpy(), dtype=torch.float32)[:, None, :]
    assert classify_two_features(W) == phase.phase.tolist()
    sae = entry.table("sae")
    assert list(sae.l1_coefficient) == [*config.sae_l1, *config.sae_long_l1]
    assert sae.fve.le(1).all() and sae.l0.ge(0).all() and sae.mmcs.between(-1, 1).all()
    assert (sae.dead <= config.sae_latent_ratio * config.sae_features).all()
    registered = sae[sae.training == "registered"]
    assert entry.summary["sae_best_mmcs"] == pytest.approx(registered.mmcs.max())
    cosines = entry.table("sae_cosines")
    for training, scores in sae.groupby("training"):      # the stored mean max cosine is the per-feature table's mean
        kept = cosines[(cosines.training == training) & cosines.represented]
        means = kept.groupby("l1_coefficient").max_cosine.mean()
        assert np.allclose(means.loc[scores.l1_coefficient].to_numpy(), scores.mmcs.to_numpy(), atol=1e-5)
    curve = entry.table("sweep_curve")
    last = curve[curve.step == curve.step.max()].sort_values(["activation", "instance"])
    final = instances.sort_values(["activation"], kind="stable").represented.to_numpy()   # gelu first, as `last`
    assert (last.represented.to_numpy() == final).all()
    assert set(entry.table("phase_antipodal").replicate) == {0}


def test_too_many_hidden_dimensions_is_one_clear_error():
    from labpy.errors import ConfigError
    from labpy.experiments.superposition import SuperpositionConfig

    with pytest.raises(ConfigError, match=r"SuperpositionConfig.n_hidden = 20 is out of range; superposition needs "
                                          r"fewer hidden dimensions than features, so it must be < n_features = 20"):
        SuperpositionConfig(n_hidden=20)
    with pytest.raises(ConfigError,
                       match=r"SuperpositionConfig.sparsities = \(0.0, 1.0\) is out of range; every entry"):
        SuperpositionConfig(sparsities=(0.0, 1.0))


def test_the_linear_output_model_has_no_relu():
    model = ToyModel(1, 2, 1, activation="linear", seed=0)
    with torch.no_grad():
        model.W.copy_(torch.tensor([[[1.0, -1.0]]]))
        model.b.copy_(torch.tensor([[-0.2, 0.1]]))
    x = torch.tensor([[[0.5, 0.0], [0.3, 0.8]]])                    # (I=1, B=2, n=2); WᵀW = [[1, -1], [-1, 1]]
    assert torch.allclose(model(x)[0], torch.tensor([[0.3, -0.4], [-0.7, 0.6]]))


def test_superposition_page_analysis_on_known_geometry():
    import pandas as pd

    from labpy.experiments import superposition_analysis as sa

    angles = 2 * math.pi * torch.arange(5) / 5
    pentagon = torch.stack([angles.cos(), angles.sin()])                     # (2, 5)
    pairs = columns([1, 0], [-1, 0], [0, 1], [0, -1], [0.01, 0])              # two antipodal pairs and a dead feature
    long = pd.concat([pd.DataFrame([{"instance": k, "hidden": h, "feature": f, "weight": float(W[h, f])}
                                    for h in range(2) for f in range(5)]) for k, W in enumerate([pentagon, pairs])])
    layout = sa.planar_layout(long, 0)
    assert layout.kept.tolist() == [0, 1, 2, 3, 4] and np.allclose(layout.gaps, 72)
    layout = sa.planar_layout(long, 1)
    assert layout.kept.tolist() == [0, 1, 2, 3] and np.allclose(layout.gaps, 90)
    assert sa.antipodal_features(layout.w, layout.kept) == [0, 1, 2, 3]
    assert sa.antipodal_features(pentagon.numpy(), range(5)) == []
    arrows = sa.planar_arrows(long)
    assert len(arrows) == 10 and np.allclose(arrows[arrows.instance == 1].sort_values("feature").x, [1, -1, 0, 0, 0.01])
    assert sa.nearest_fraction(0.49) == "1/2" and sa.nearest_fraction(0.2) == "none"
    assert sa.share_near([1.0, 0.5, 0.45, 0.2]) == 0.5
    # windows of ±0.03 round 1, 3/4, 2/3, 1/2 and the merged 3/8–2/5 pair, over [0.2, 1]
    covered = 0.03 + 3 * 0.06 + (0.43 - 0.345)
    assert sa.uniform_share_near(0.2, 1.0) == pytest.approx(covered / 0.8)
    frame = pd.DataFrame({"density": [1, 1, 0.1, 0.1], "relative_importance": [2, 2, 2, 2],
                          "loss": [0.2, 0.1, 0.3, 0.4], "w1": [1, 0.02, 1.0, 0.8], "w2": [0, 1.0, -1.0, -1.0]})
    cells = sa.phase_cells(frame)
    assert cells.loss.tolist() == [0.3, 0.1]
    assert sa.off_the_discrete_solutions(frame).index.tolist() == [3]


def test_the_dip_hybrids_split_gelu_into_its_dip_and_its_curve():
    import torch.nn.functional as F

    from labpy.toy.superposition import ACTIVATIONS, gelu_without_dip, relu_with_dip

    x = torch.linspace(-4, 4, 8001, dtype=torch.float64)
    below, above = x < 0, x >= 0
    assert torch.equal(relu_with_dip(x)[above], x[above]) and torch.equal(relu_with_dip(x)[below], F.gelu(x)[below])
    assert torch.equal(gelu_without_dip(x)[above], F.gelu(x)[above]) and (gelu_without_dip(x)[below] == 0).all()
    # the two hybrids share GELU's and ReLU's parts between them: together they are ReLU plus GELU
    assert torch.allclose(relu_with_dip(x) + gelu_without_dip(x), F.relu(x) + F.gelu(x))
    # GELU's dip: its minimum, x Φ(x) at x ≈ −0.7518, is about −0.17 (Hendrycks & Gimpel)
    low = relu_with_dip(x).argmin()
    assert relu_with_dip(x)[low].item() == pytest.approx(-0.16997, abs=1e-4) and x[low].item() == pytest.approx(
        -0.752, abs=2e-3)
    assert {"relu_dip", "gelu_no_dip"} <= set(ACTIVATIONS)
    for depth in (0.1, 0.5):                                    # the shallower dips: the same dip, scaled
        shallow = ACTIVATIONS[f"relu_dip_{depth:g}"](x)
        assert torch.equal(shallow[above], x[above])
        assert torch.allclose(shallow[below], depth * F.gelu(x)[below])


def test_the_dip_run_stores_each_activation_with_its_biases(tmp_store):
    from labpy import results
    from labpy.experiments.superposition import sparsity_sweep, trained_sweep
    from labpy.experiments.superposition_dip import sweep_with_bias

    run = results("superposition_dip", "smoke")["toy"]
    c = run.config
    instances = run.table("sweep_instances")
    assert list(instances.activation.unique()) == list(c.activations)
    assert len(instances) == len(c.activations) * len(c.sparsities) * c.replicates
    assert len(run.table("geometry_instances")) == len(c.activations) * len(c.geometry_sparsities) * c.replicates
    sweep = c.sweep_config()
    features, table, _ = sweep_with_bias(sweep, c.n_features, c.n_hidden, c.sparsities, "relu_dip", seed=3)
    plain_features, plain_table, _, _ = sparsity_sweep(sweep, c.n_features, c.n_hidden, c.sparsities, "relu_dip", 3)
    assert features.drop(columns="bias").equals(plain_features)
    assert table.drop(columns="instance").equals(plain_table) and list(table.instance) == list(plain_table.index)
    geometry, weights = run.table("geometry_instances"), run.table("geometry_weights")
    assert set(map(tuple, geometry[["activation", "instance", "sparsity"]].to_numpy())) == set(
        map(tuple, weights[["activation", "instance", "sparsity"]].drop_duplicates().to_numpy()))
    model = trained_sweep(sweep, c.n_features, c.n_hidden, c.sparsities, "relu_dip", seed=3)[0]
    by_feature = features.set_index(["instance", "feature"]).bias
    assert all(by_feature[(k, i)] == pytest.approx(model.b[k, i].item(), abs=1e-7)
               for k in range(model.b.shape[0]) for i in range(c.n_features))
    stored = run.table("sweep_features")
    assert stored.bias.notna().all() and (stored.groupby(["activation", "instance"]).size() == c.n_features).all()
