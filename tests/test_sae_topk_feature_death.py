"""sae_topk_feature_death: the slot census on a hand-built SAE, and the smoke run's curve."""

import pytest
import torch

from labpy.experiments.sae_topk import TopKAutoencoder
from labpy.experiments.sae_topk_feature_death import FeatureDeathConfig, slot_census


def test_census_of_an_sae_whose_first_latents_are_the_features():
    """4 orthogonal features in 4 dimensions, latents 0–3 on them, latent 4 a spare along feature 0 + feature 1,
    k = 1. An input with feature 0 alone is coded by latent 0 (a hit); one with features 0 and 1 at 0.5 each is
    coded by the spare (0.5·√2 > 0.5), so neither present feature makes the code."""
    sae = TopKAutoencoder((1,), d_in=4, n_latents=5, seed=0)
    spare = torch.tensor([1.0, 1.0, 0, 0]) / 2 ** 0.5
    with torch.no_grad():
        sae.W_dec[0] = torch.cat([torch.eye(4), spare[None]])
        sae.W_enc[0] = sae.W_dec[0].T
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    x = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0]])
    row = slot_census(sae, x, torch.eye(4), torch.ones(4, dtype=torch.bool))[0]
    assert row["hit_rate"] == pytest.approx(1 / 3)                  # 1 hit of 3 (input, present feature) pairs
    assert row["spare_share"] == pytest.approx(0.5 * 2 ** 0.5 / (1 + 0.5 * 2 ** 0.5))
    assert row["feature_act"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert row["spare_act"] == pytest.approx(0.5 * 2 ** 0.5)


def test_smoke_run_follows_both_ks_from_the_features(tmp_store):
    from labpy import results

    entry = results("sae_topk_feature_death", "smoke")["dense"]
    curve = entry.table("curve")
    assert set(curve.k) == set(entry.config.ks)
    assert curve.hit_rate.between(0, 1).all() and curve.spare_share.between(0, 1).all()
    assert (curve.groupby("k").step.min() == -1).all()
    with pytest.raises(ValueError, match="probe_inputs"):
        FeatureDeathConfig(probe_inputs=20_000)
