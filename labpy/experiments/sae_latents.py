"""How does a sparse autoencoder's recovery of a toy model's features depend on its width and on the sparsity?

The superposition page trained one SAE width (2n latents) on one toy model (n = 40 features in m = 10 dimensions,
uniform importance, S = 0.97); trained long enough, it found nearly every feature. This experiment repeats that
longer recipe (`sae_long_*` of `SuperpositionConfig`) over a grid: toy models at several feature sparsities (the
lowest-loss of a few seeds each, as there), and on each, SAEs with n, 2n and 4n latents at a few L1 coefficients.
Each is scored as there (`evaluate_sae`): mean max cosine similarity to the represented features, features
recovered, dead latents, L0 and the variance explained.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..device import one_thread
from ..store import RunResult
from ..toy.superposition import instance_grid
from ..validation import check_ranges, int_at_least, require
from .registry import Experiment, RunContext, register
from .superposition import SPARSITY, lowest_loss_toy, represented_columns, sae_sweep


@dataclass(frozen=True)
class SaeLatentsConfig:
    n_features: int = 40
    n_hidden: int = 10
    sparsities: tuple[float, ...] = (0.9, 0.97, 0.99)
    toy_replicates: int = 3
    toy_steps: int = 5000
    toy_batch: int = 1024
    latent_ratios: tuple[int, ...] = (1, 2, 4)     # latents = ratio × features
    l1: tuple[float, ...] = (0.1, 0.3, 1.0)
    sae_steps: int = 10_000
    sae_batch: int = 256
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_hidden", "toy_replicates", "toy_steps", "toy_batch", "sae_steps",
                                         "sae_batch", "latent_ratios"),
                     positive=("lr", "l1"), nonneg_int=("seed",),
                     rules={"n_features": int_at_least(2), "sparsities": SPARSITY},
                     nonempty=("sparsities", "latent_ratios", "l1"))
        require(self, self.n_hidden < self.n_features, "n_hidden",
                f"is out of range; superposition needs fewer hidden dimensions than features, so it must be < "
                f"n_features = {self.n_features}")


def run(config: SaeLatentsConfig, ctx: RunContext) -> RunResult:
    grid = instance_grid(sparsity=config.sparsities, latent_ratio=config.latent_ratios)
    bar = tqdm(total=len(grid), desc="sae_latents", leave=False,
               disable=None if ctx.progress is None else not ctx.progress)
    scores, cosines, curves, toys, seconds = [], [], [], [], {}
    with one_thread():
        for k, sparsity in enumerate(config.sparsities):
            seed = 1000 * config.seed + 100 * k
            W, features = lowest_loss_toy(config.n_features, config.n_hidden, sparsity, config.toy_replicates,
                                          config.toy_steps, config.toy_batch, config.lr, seed, {"sparsity": sparsity})
            toys.append(features)
            truth = represented_columns(W, features)                                                   # (n_rep, m)
            probability = torch.full((config.n_features,), 1 - sparsity)
            for ratio in config.latent_ratios:
                bar.set_postfix_str(f"S={sparsity:g}, {ratio}n latents")
                t0 = time.perf_counter()
                sweep = sae_sweep(W, probability, truth, config.l1, ratio * config.n_features, config.sae_steps,
                                  config.sae_batch, config.lr, seed + 10 + ratio)
                seconds[f"S={sparsity:g}, {ratio}n"] = round(time.perf_counter() - t0, 1)
                labels = {"sparsity": sparsity, "latent_ratio": ratio, "latents": ratio * config.n_features}
                scores.append(sweep["sae"].assign(**labels))
                cosines.append(sweep["sae_cosines"].assign(**labels))
                curves.append(sweep["sae_curve"].assign(**labels))
                bar.update()
    bar.close()
    tables = {"sae": pd.concat(scores, ignore_index=True), "sae_cosines": pd.concat(cosines, ignore_index=True),
              "sae_curve": pd.concat(curves, ignore_index=True), "toys": pd.concat(toys, ignore_index=True)}
    return RunResult(tables=tables, summary={"seconds": seconds}, seed=config.seed)


SMOKE = SaeLatentsConfig(n_features=8, n_hidden=3, sparsities=(0.9,), toy_replicates=1, toy_steps=40, toy_batch=64,
                         latent_ratios=(1, 2), l1=(0.1,), sae_steps=40, sae_batch=32)

register(Experiment(
    name="sae_latents",
    title="Sparse autoencoders on a toy model: recovery against the number of latents and the features' sparsity",
    track="Toy models",
    page="experiments/superposition.qmd",
    version=1,
    config_type=SaeLatentsConfig,
    # "dense" (added after the "toy" run's results): S = 0.9 only, with larger L1 coefficients
    scales={"smoke": {"toy": SMOKE},
            "cpu": {"toy": SaeLatentsConfig(), "dense": SaeLatentsConfig(sparsities=(0.9,), l1=(1.0, 3.0, 10.0))}},
    run=run,
    description="SAEs with n, 2n and 4n latents over three L1 coefficients, trained on toy models (40 features in 10 "
                "dimensions) at three sparsities; scored against the known features.",
    device="cpu",
))
