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
from ..toy.superposition import ToyModel, features_frame, instance_grid, train_toy
from ..validation import check_ranges, int_at_least, require
from .registry import Experiment, RunContext, register
from .superposition import SPARSITY, sae_sweep


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


def toy_at(config: SaeLatentsConfig, sparsity: float, seed: int) -> tuple[torch.Tensor, pd.DataFrame, float]:
    """The lowest-loss of `toy_replicates` toy models at this sparsity (uniform importance): its W (m, n), its
    per-feature table and its loss."""
    n, m = config.n_features, config.n_hidden
    I = config.toy_replicates
    probability, importance = torch.full((I, n), 1 - sparsity), torch.ones(I, n)
    toy = ToyModel(I, n, m, seed=seed)
    result = train_toy(toy, probability, importance, config.toy_steps, config.toy_batch, config.lr, seed=seed + 1)
    best = int(result.loss.argmin())
    W = toy.W.detach()[best]                                                                            # (m, n)
    features = features_frame(W[None], importance[:1], pd.DataFrame({"sparsity": [sparsity]}))
    return W, features, float(result.loss[best])


def run(config: SaeLatentsConfig, ctx: RunContext) -> RunResult:
    grid = instance_grid(sparsity=config.sparsities, latent_ratio=config.latent_ratios)
    bar = tqdm(total=len(grid), desc="sae_latents", leave=False,
               disable=None if ctx.progress is None else not ctx.progress)
    scores, cosines, curves, toys, seconds = [], [], [], [], {}
    with one_thread():
        for k, sparsity in enumerate(config.sparsities):
            seed = 1000 * config.seed + 100 * k
            W, features, toy_loss = toy_at(config, sparsity, seed)
            toys.append(features.assign(toy_loss=toy_loss))
            truth = W.T[torch.as_tensor(features.represented.to_numpy(copy=True))]                     # (n_rep, m)
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
