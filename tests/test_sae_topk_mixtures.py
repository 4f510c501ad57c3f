"""sae_topk_mixtures: AuxK reaches only dead latents, the mixture measures on a hand-built SAE, the oracle by hand,
and a smoke run whose plain SAEs are `sae_topk`'s own."""

import numpy as np
import pytest
import torch

from labpy.experiments.sae_topk import TopKAutoencoder
from labpy.experiments.sae_topk_mixtures import (TopKMixturesConfig, mixture_scores, oracle_fve,
                                                 participation_ratio, train_topk_auxk)


def test_auxk_moves_a_dead_latent_that_plain_training_never_touches():
    """Latent 0 points away from every input, so it never fires: without AuxK its encoder column gets no gradient,
    with AuxK (dead after one step) it does."""
    h = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)).abs()            # inputs in the + orthant
    moved = {}
    for coefficient in (0.0, 1.0):
        sae = TopKAutoencoder((1,), d_in=4, n_latents=6, seed=1)
        with torch.no_grad():
            sae.W_enc[0, :, 0] = -1.0                                                    # never fires on h ≥ 0
            sae.b_enc[0, 0] = 0.5                                                        # but ReLU'd pre > 0 on some
        before = sae.W_enc[0, :, 0].detach().clone()
        curve = train_topk_auxk(sae, lambda step: h, steps=20, lr=1e-2, k_aux=1, dead_after=1,
                                coefficient=coefficient)
        moved[coefficient] = float((sae.W_enc[0, :, 0].detach() - before).abs().max())
        assert curve.dead.max() >= 1
    assert moved[0.0] == 0.0
    assert moved[1.0] > 1e-3


def test_participation_ratio_counts_mixed_features():
    one = torch.tensor([[1.0, 0, 0, 0]])
    even = torch.full((1, 4), 0.5)
    assert participation_ratio(one).item() == pytest.approx(1.0)
    assert participation_ratio(even).item() == pytest.approx(4.0)


def test_mixture_scores_of_an_sae_that_is_the_features():
    """Decoder = encoder = the identity on 4 orthogonal features, k = 1: every live latent is a feature, a lone
    feature is one latent, and a Gaussian input is rebuilt from its largest positive coordinate — computed by hand."""
    sae = TopKAutoencoder((1,), d_in=4, n_latents=4, seed=0)
    with torch.no_grad():
        sae.W_dec[0] = torch.eye(4)
        sae.W_enc[0] = torch.eye(4)
    truth = torch.eye(4)
    h_random = torch.randn(2000, 4, generator=torch.Generator().manual_seed(3))
    row = mixture_scores(sae, truth, truth, h_random).iloc[0]
    assert row.live == 4 and row.feature_latents == 1.0 and row.mixed_features == pytest.approx(1.0)
    assert row.lone_top_share == pytest.approx(1.0) and row.lone_active == 1 and row.lone_cosine == pytest.approx(1.0)
    x = h_random.numpy()
    kept = np.zeros_like(x)
    best = x.argmax(1)
    kept[np.arange(len(x)), best] = np.maximum(x[np.arange(len(x)), best], 0)
    expected = 1 - ((kept - x) ** 2).sum(1).mean() / ((x - x.mean(0)) ** 2).sum(1).mean()
    assert row.random_fve == pytest.approx(expected, rel=1e-5)


def test_oracle_keeps_each_inputs_k_largest_features_by_hand():
    x = torch.tensor([[0.9, 0.0, 0.2, 0.5], [0.0, 0.3, 0.0, 0.0]])
    W = torch.eye(4)[:3]                                                                 # (m=3, n=4): feature 3 lost
    assert oracle_fve(x, W, 4) == pytest.approx(1.0)
    h = x @ W.T
    kept = torch.tensor([[0.9, 0.0, 0.0, 0.0], [0.0, 0.3, 0.0, 0.0]]) @ W.T            # k = 1 keeps 0.9 and 0.3
    expected = 1 - ((kept - h) ** 2).sum(-1).mean() / ((h - h.mean(0)) ** 2).sum(-1).mean()
    assert oracle_fve(x, W, 1) == pytest.approx(float(expected))


def test_smoke_run_retrains_sae_topks_own_saes(tmp_store):
    from labpy import results

    entry = results("sae_topk_mixtures", "smoke")["dense"]
    scores = entry.table("scores")
    assert sorted(set(scores.variant)) == ["top-k", "top-k + AuxK"]
    plain = scores[scores.variant == "top-k"].set_index("k")
    reference = results("sae_topk", "smoke")["dense"].table("sae").set_index("k")
    for column in ("mse", "fve", "mmcs", "dead"):
        assert np.allclose(plain[column], reference[column], rtol=1e-4), column
    assert scores.feature_latents.between(0, 1).all() and (scores.mixed_features >= 1 - 1e-6).all()
    assert (scores.oracle_fve <= 1 + 1e-9).all()
    with pytest.raises(ValueError, match="dead_after"):
        TopKMixturesConfig(dead_after=0)
