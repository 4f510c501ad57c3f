"""Two follow-ups to the superposition page: a finer sparsity sweep, and features of two sparsities at once.

1. Fine sweep. The page's sweep saw the dimensions per feature, D* = m / ‖W‖²_F, sit at 1/2 at S = 0.7 and 0.8
   only: two points, a factor 1.5 apart in 1/(1 − S), too coarse to test the paper's "sticky" plateau. This sweep
   samples 1/(1 − S) evenly on a log scale from 1.5 to 12.5 (S from 0.33 to 0.92), n = 20 into m = 5, with the
   page's geometric importance 0.9^i and again with uniform importance (the paper's figure), every point × seed
   as one batched model (`sparsity_sweep`).
2. Non-uniform sparsity (open problem 4.4). n = 20 into m = 5, uniform importance; features 0–9 (class A) keep
   density `dense_density`, features 10–19 (class B) get sparser over `sparse_densities`. Per feature: its norm,
   its dimensionality D_i, how much of its readout the *other* class leaks into, Σ_j (Ŵ_i · W_j)² over j in it,
   and its antipodal partner if it has one. The `boundary` run (added after the first one's results) repeats this
   part alone, with more seeds, between equal densities and B three times sparser.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..device import one_thread
from ..store import RunResult
from ..toy.superposition import (ToyModel, antipodal_partners, dimensions_per_feature, features_frame,
                                 instance_grid, interference, train_toy)
from ..validation import check_ranges, int_at_least, number_between, require
from .registry import Experiment, RunContext, register
from .superposition import DENSITY, SuperpositionConfig, sparsity_sweep


def log_spaced_sparsities(low_k: float, high_k: float, points: int) -> tuple[float, ...]:
    """Sparsities S whose 1/(1 − S) runs from `low_k` to `high_k` in equal ratios (rounded to 4 places)."""
    return tuple(round(1 - 1 / k, 4) for k in np.geomspace(low_k, high_k, points))


@dataclass(frozen=True)
class SuperpositionVariantsConfig:
    n_features: int = 20
    n_hidden: int = 5
    # 1. fine sweep: 1/(1 - S) from fine_low_k to fine_high_k, `fine_points` points (0: no fine sweep), at each
    #    importance decay
    fine_low_k: float = 1.5
    fine_high_k: float = 12.5
    fine_points: int = 18
    importance_decays: tuple[float, ...] = (0.9, 1.0)
    replicates: int = 3
    steps: int = 5000
    batch_size: int = 1024
    lr: float = 1e-3
    # 2. non-uniform sparsity: class A (the first half of the features) dense, class B sparser
    dense_density: float = 0.3
    sparse_densities: tuple[float, ...] = (0.3, 0.1, 0.03, 0.01, 0.001)
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_hidden", "replicates", "steps", "batch_size"),
                     positive=("lr", "fine_low_k", "fine_high_k"), nonneg_int=("seed", "fine_points"),
                     rules={"n_features": int_at_least(2), "importance_decays": number_between(0, 1),
                            "dense_density": DENSITY, "sparse_densities": DENSITY},
                     nonempty=("importance_decays", "sparse_densities"))
        require(self, self.n_hidden < self.n_features, "n_hidden",
                f"is out of range; superposition needs fewer hidden dimensions than features, so it must be < "
                f"n_features = {self.n_features}")
        require(self, 1 < self.fine_low_k < self.fine_high_k, "fine_low_k",
                f"is out of range; it must be above 1 (S = 0) and below fine_high_k = {self.fine_high_k}")

    @property
    def fine_sparsities(self) -> tuple[float, ...]:
        return log_spaced_sparsities(self.fine_low_k, self.fine_high_k, self.fine_points)

    def sweep_config(self, decay: float) -> SuperpositionConfig:
        """The superposition page's sweep settings with this run's sparsities, seeds, steps and importance."""
        return dataclasses.replace(SuperpositionConfig(), n_features=self.n_features, n_hidden=self.n_hidden,
                                   importance_decay=decay, sparsities=self.fine_sparsities,
                                   replicates=self.replicates, steps=self.steps, batch_size=self.batch_size,
                                   lr=self.lr)


def two_sparsities(config: SuperpositionVariantsConfig, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Class A (features < n/2) at `dense_density`, class B at each of `sparse_densities`, × replicates, as one
    batched model with uniform importance. Returns (per-feature table, per-instance table)."""
    n, m = config.n_features, config.n_hidden
    labels = instance_grid(sparse_density=config.sparse_densities, replicate=range(config.replicates))
    I = len(labels)
    is_b = torch.arange(n) >= n // 2                                                                     # (n,)
    probability = torch.where(is_b, torch.tensor(labels.sparse_density.to_numpy(), dtype=torch.float32)[:, None],
                              torch.tensor(config.dense_density))                                        # (I, n)
    importance = torch.ones(I, n)
    model = ToyModel(I, n, m, seed=seed)
    result = train_toy(model, probability, importance, config.steps, config.batch_size, config.lr, seed=seed + 1)
    W = model.W.detach()                                                                                  # (I, m, n)
    features = features_frame(W, importance, labels).assign(
        feature_class=np.where(np.tile(is_b.numpy(), I), "B (sparser)", "A (dense)"),
        density=probability.reshape(-1).numpy(),
        from_class_a=interference(W, ~is_b).reshape(-1).numpy(),
        from_class_b=interference(W, is_b).reshape(-1).numpy(),
        partner=antipodal_partners(W).reshape(-1).numpy(),
        bias=model.b.detach().reshape(-1).numpy())
    instances = labels.assign(loss=result.loss.numpy(), dims_per_feature=dimensions_per_feature(W).numpy())
    return features, instances


def run(config: SuperpositionVariantsConfig, ctx: RunContext) -> RunResult:
    seconds: dict[str, float] = {}
    sweeps = []
    with one_thread():
        for k, decay in enumerate(config.importance_decays if config.fine_points else ()):
            t0 = time.perf_counter()
            features, instances, _, _ = sparsity_sweep(config.sweep_config(decay), config.n_features, config.n_hidden,
                                                       config.fine_sparsities, "relu", seed=config.seed + 100 * k)
            sweeps.append((features.assign(importance_decay=decay), instances.assign(importance_decay=decay)))
            seconds[f"fine sweep, decay {decay:g}"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        two_features, two_instances = two_sparsities(config, seed=config.seed + 500)
        seconds["two sparsities"] = round(time.perf_counter() - t0, 1)
    tables = {"two_features": two_features, "two_instances": two_instances}
    if sweeps:
        tables |= {"fine_features": pd.concat([f for f, _ in sweeps], ignore_index=True),
                   "fine_instances": pd.concat([i for _, i in sweeps], ignore_index=True)}
    return RunResult(tables=tables, summary={"seconds_per_part": seconds}, seed=config.seed)


SMOKE = SuperpositionVariantsConfig(n_features=6, n_hidden=2, fine_points=3, replicates=1, steps=40, batch_size=64,
                                    sparse_densities=(0.3, 0.01))

register(Experiment(
    name="superposition_variants",
    title="Superposition, a second look: a fine sparsity sweep, and two classes of sparsity at once",
    track="Toy models",
    page="experiments/superposition.qmd",
    version=1,
    config_type=SuperpositionVariantsConfig,
    # "boundary" (added after the "toy" run's results): the two-class model between equal and three-fold sparser
    scales={"smoke": {"toy": SMOKE},
            "cpu": {"toy": SuperpositionVariantsConfig(),
                    "boundary": SuperpositionVariantsConfig(fine_points=0, replicates=5,
                                                            sparse_densities=(0.3, 0.25, 0.2, 0.15, 0.1))}},
    run=run,
    description="The 20 → 5 ReLU output model over a fine, log-spaced sparsity sweep with geometric and uniform "
                "importance; and with half its features dense and half sparser (open problem 4.4).",
    device="cpu",
))
