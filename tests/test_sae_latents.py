"""sae_latents: the grid it runs, that each SAE has the width its label says, and that its scores are the shared
`evaluate_sae`'s on the toy model it names."""

import dataclasses
import math

import pytest

from labpy.experiments.registry import RunContext, get_experiment
from labpy.experiments.sae_latents import SaeLatentsConfig
from labpy.experiments.superposition import SuperpositionConfig


def test_cpu_config_repeats_the_superposition_pages_longer_recipe():
    config = get_experiment("sae_latents").configs("cpu")["toy"]
    page = SuperpositionConfig()
    assert (config.n_features, config.n_hidden) == (page.sae_features, page.sae_hidden)
    assert (config.sae_steps, config.sae_batch, config.lr) == (page.sae_long_steps, page.sae_long_batch, page.sae_lr)
    assert config.l1 == page.sae_long_l1 and page.sae_sparsity in config.sparsities
    assert page.sae_latent_ratio in config.latent_ratios
    with pytest.raises(ValueError, match="n_hidden"):
        dataclasses.replace(config, n_hidden=40)
    with pytest.raises(ValueError, match="latent_ratios"):
        dataclasses.replace(config, latent_ratios=(0,))


def test_smoke_run_has_every_cell_of_the_grid():
    experiment = get_experiment("sae_latents")
    config = experiment.configs("smoke")["toy"]
    result = experiment.run(config, RunContext(work_dir=None))
    sae = result.tables["sae"]
    cells = {(s, r) for s in config.sparsities for r in config.latent_ratios}
    assert set(zip(sae.sparsity, sae.latent_ratio)) == cells
    assert len(sae) == len(cells) * len(config.l1)
    assert (sae.latents == sae.latent_ratio * config.n_features).all()
    assert (sae.dead <= sae.latents).all() and sae.mmcs.between(-1, 1).all()
    toys = result.tables["toys"]
    assert len(toys) == config.n_features * len(config.sparsities)
    cos = result.tables["sae_cosines"]
    assert set(cos.latent_ratio) == set(config.latent_ratios) and not math.isnan(cos.max_cosine.max())
