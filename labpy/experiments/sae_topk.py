"""A top-k sparse autoencoder on the dense toy model: does choosing exactly k latents recover the features where
an L1 penalty could not?

`sae_latents` found SAEs on the S = 0.9 toy model (40 features in 10 dimensions, about four active at once) capped
near a mean max cosine similarity of 0.93 at their best L1 coefficient, explaining under half the variance; larger
coefficients collapsed the code. An L1 penalty shrinks every active latent; a top-k SAE (Makhzani & Frey 2013; Gao et
al. 2024) has no penalty and keeps only each input's k largest latents, so it cannot shrink them. This experiment
trains top-k SAEs with 2n latents at several k on the same toy model (`lowest_loss_toy` with `sae_latents`' seed and
recipe) and scores them as there (`evaluate_sae`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..device import one_thread
from ..store import RunResult
from ..toy.sae import SparseAutoencoder, evaluate_sae, train_sae
from ..toy.superposition import sample_features
from ..validation import check_ranges, int_at_least, number_between, require
from .registry import Experiment, RunContext, register
from .superposition import EVAL_SAMPLES, lowest_loss_toy, represented_columns


class TopKAutoencoder(SparseAutoencoder):
    """`SparseAutoencoder` with the ReLU code cut to each input's k largest latents (instance i keeps ks[i])."""

    def __init__(self, ks: tuple[int, ...], d_in: int, n_latents: int, seed: int = 0) -> None:
        super().__init__(len(ks), d_in, n_latents, seed)
        self.register_buffer("ks", torch.tensor(ks))                         # (I,)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        return top_k_of(super().encode(h), self.ks)                          # (I, B, L)


def top_k_of(values: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """values (I, B, L) ≥ 0 with all but each row's k largest set to zero (k an int, or one per instance (I,));
    ties at the k-th value are kept."""
    ks = torch.as_tensor(k).expand(values.shape[0])
    top = values.topk(int(ks.max()), dim=-1).values                          # (I, B, k_max), descending
    threshold = top.gather(-1, (ks - 1).view(-1, 1, 1).expand(-1, values.shape[1], 1))         # (I, B, 1)
    return values * (values >= threshold)


@dataclass(frozen=True)
class SaeTopKConfig:
    n_features: int = 40
    n_hidden: int = 10
    sparsity: float = 0.9
    toy_replicates: int = 3
    toy_steps: int = 5000
    toy_batch: int = 1024
    latent_ratio: int = 2
    ks: tuple[int, ...] = (2, 3, 4, 6, 8)
    sae_steps: int = 10_000
    sae_batch: int = 256
    lr: float = 1e-3
    seed: int = 0                    # sae_latents' seed for S = 0.9: the same toy model

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_hidden", "toy_replicates", "toy_steps", "toy_batch", "latent_ratio", "ks",
                                         "sae_steps", "sae_batch"),
                     positive=("lr",), nonneg_int=("seed",), nonempty=("ks",),
                     rules={"n_features": int_at_least(2), "sparsity": number_between(0, 1, high_open=True)})
        require(self, max(self.ks) <= self.latent_ratio * self.n_features, "ks",
                f"is out of range; k cannot exceed the {self.latent_ratio * self.n_features} latents")


@dataclass
class TrainedTopK:
    """What `train_topk` leaves: the SAEs (one instance per k), the toy model they read and how to sample it."""

    sae: TopKAutoencoder
    W: torch.Tensor                  # (m, n) the toy model's weights: feature i writes column i
    features: pd.DataFrame           # the toy's per-feature table (`represented`, ...)
    truth: torch.Tensor              # (n_rep, m) the represented features' directions
    probability: torch.Tensor        # (n,) each feature's chance of being active
    curve: pd.DataFrame              # the SAEs' training curve


def toy_for(config: SaeTopKConfig) -> tuple[torch.Tensor, pd.DataFrame, torch.Tensor, torch.Tensor]:
    """(W, features, truth, probability) of `sae_latents`' toy model for this sparsity and seed."""
    W, features = lowest_loss_toy(config.n_features, config.n_hidden, config.sparsity, config.toy_replicates,
                                  config.toy_steps, config.toy_batch, config.lr, 1000 * config.seed,
                                  {"sparsity": config.sparsity})
    return W, features, represented_columns(W, features), torch.full((config.n_features,), 1 - config.sparsity)


def activation_sampler(config: SaeTopKConfig, W: torch.Tensor, probability: torch.Tensor):
    """`sample(step) -> (sae_batch, m)` toy activations from a generator seeded as `sae_topk` seeds it."""
    generator = torch.Generator().manual_seed(1000 * config.seed + 10 + config.latent_ratio)

    @torch.no_grad()
    def activations(step: int) -> torch.Tensor:
        return sample_features(config.sae_batch, probability[None], generator)[0] @ W.T              # (B, m)
    return activations


def eval_features(config: SaeTopKConfig, probability: torch.Tensor) -> torch.Tensor:
    """(EVAL_SAMPLES, n) held-out feature values, the same for every experiment built on this config."""
    return sample_features(EVAL_SAMPLES, probability[None], torch.Generator().manual_seed(1000 * config.seed + 12))[0]


def fresh_topk(config: SaeTopKConfig, d_in: int) -> TopKAutoencoder:
    """One untrained top-k SAE per k in `config.ks`, initialised as `sae_topk` initialises them."""
    return TopKAutoencoder(config.ks, d_in, config.latent_ratio * config.n_features, seed=1000 * config.seed + 11)


def train_topk(config: SaeTopKConfig) -> TrainedTopK:
    """The toy model and one top-k SAE per k in `config.ks`, trained on it (one torch thread: reproducible)."""
    with one_thread():
        W, features, truth, probability = toy_for(config)
        sae = fresh_topk(config, W.shape[0])
        curve = train_sae(sae, activation_sampler(config, W, probability), torch.zeros(len(config.ks)),
                          config.sae_steps, lr=config.lr)
    curve["k"] = curve.instance.map(dict(enumerate(config.ks)))
    return TrainedTopK(sae, W, features, truth, probability, curve)


def run(config: SaeTopKConfig, ctx: RunContext) -> RunResult:
    trained = train_topk(config)
    x_eval = eval_features(config, trained.probability)
    with one_thread():
        scores = evaluate_sae(trained.sae, x_eval @ trained.W.T, trained.truth).assign(
            k=list(config.ks), true_l0=float((x_eval > 0).sum(-1).float().mean()))
    return RunResult(tables={"sae": scores, "sae_curve": trained.curve, "toys": trained.features},
                     summary={"n_represented": int(trained.features.represented.sum())}, seed=config.seed)


# the smoke scale of sae_topk and the experiments built on it: a tiny toy, two ks, a few SAE steps
SMOKE_SIZES = dict(n_features=8, n_hidden=3, toy_replicates=1, toy_steps=40, toy_batch=64, ks=(1, 2), sae_steps=40,
                   sae_batch=32)


register(Experiment(
    name="sae_topk",
    title="A top-k sparse autoencoder on the dense toy model",
    track="Toy models",
    page="experiments/superposition.qmd",
    version=1,
    config_type=SaeTopKConfig,
    scales={"smoke": {"dense": SaeTopKConfig(**SMOKE_SIZES)},
            "cpu": {"dense": SaeTopKConfig()}},
    run=run,
    description="Top-k SAEs (2n latents, k = 2 to 8) on the S = 0.9 toy model of sae_latents: recovery of the known "
                "features, variance explained and dead latents.",
    device="cpu",
))
