"""sae_topk_starts: the feature and copied starts, the training probe, and a smoke run whose random start is
`sae_topk`'s recipe and whose feature start begins on the features."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labpy.experiments.registry import RunContext
from labpy.experiments.sae_topk import SaeTopKConfig, TopKAutoencoder
from labpy.experiments.sae_topk import run as run_topk
from labpy.experiments.sae_topk_starts import TopKStartsConfig, copied_start, feature_start
from labpy.toy.sae import train_sae


def test_feature_start_sets_the_first_latents_to_the_features_and_leaves_the_rest():
    truth = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    fresh = TopKAutoencoder((2, 4), d_in=5, n_latents=8, seed=1)
    sae = feature_start(TopKAutoencoder((2, 4), d_in=5, n_latents=8, seed=1), truth)
    for i in range(2):
        assert torch.allclose(sae.W_dec[i, :3], F.normalize(truth, dim=-1))
        assert torch.allclose(sae.W_enc[i, :, :3], F.normalize(truth, dim=-1).T)
        assert torch.equal(sae.W_dec[i, 3:], fresh.W_dec[i, 3:]) and torch.equal(sae.W_enc[i, :, 3:], fresh.W_enc[i, :, 3:])
    assert (sae.b_enc[:, :3] == 0).all()


def test_copied_start_gives_every_instance_the_source_instance():
    source = TopKAutoencoder((1, 2, 3), d_in=4, n_latents=6, seed=2)
    with torch.no_grad():
        source.b_dec += torch.arange(3.0)[:, None]
    sae = copied_start(TopKAutoencoder((5, 6), d_in=4, n_latents=6, seed=3), source, 1)
    for name in ("W_dec", "W_enc", "b_enc", "b_dec"):
        assert all(torch.equal(getattr(sae, name)[i], getattr(source, name)[1]) for i in range(2))
    assert sae.ks.tolist() == [5, 6]


def test_train_sae_logs_what_the_probe_returns():
    sae = TopKAutoencoder((1, 2), d_in=3, n_latents=4, seed=0)
    h = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    seen = []

    def probe(model):
        seen.append(float(model.W_dec.detach().sum()))
        return [{"tag": i * 10} for i in range(2)]

    curve = train_sae(sae, lambda step: h, torch.zeros(2), steps=40, probe=probe)
    assert len(seen) == curve.step.nunique() and set(curve.tag) == {0, 10}
    assert (curve.groupby("instance").tag.first() == [0, 10]).all()


def test_smoke_run_random_start_is_sae_topks_recipe(tmp_store, tmp_path):
    from labpy import results

    entry = results("sae_topk_starts", "smoke")["dense"]
    scores = entry.table("scores").set_index(["start", "k"])
    base = SaeTopKConfig(**{f.name: getattr(entry.config, f.name) for f in dataclasses.fields(SaeTopKConfig)})
    reference = run_topk(base, RunContext(work_dir=tmp_path / "w")).tables["sae"].set_index("k")
    for column in ("mse", "fve", "mmcs", "dead"):
        assert np.allclose(scores.loc["random"][column], reference[column], rtol=1e-5), column
    curve = entry.table("curve")
    first = curve[(curve.start == "features") & (curve.step == -1)]
    assert np.allclose(first.mmcs, 1.0)
    assert set(curve.start) == {"random", "features", "raised"}
    with pytest.raises(ValueError, match="from_k"):
        TopKStartsConfig(from_k=5)
