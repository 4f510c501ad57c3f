"""Toy Models of Superposition (Elhage et al. 2022), one open-problem variant, and a sparse autoencoder.

Run, in four parts, each one batched training run (`labpy.toy.superposition`: a leading instance dimension):

1. Sparsity sweep: n = 20 features into m = 5 dimensions, importance 0.9^i, every sparsity × seed; the same
   sweep again with the output ReLU replaced by GELU (open problem 4.10, "replace ReLU's with GeLU's").
2. Geometry: 5 features into 2 dimensions at a few sparsities, to draw the columns of W in the plane.
3. Phase diagram: 2 features into 1 neuron over relative importance × density, every cell with several seeds
   (the page shows the lowest-loss seed of each cell, as the paper does), classified by
   `classify_two_features`.
4. SAE: a toy model with n = 40 features in m = 10 dimensions, uniform importance and high sparsity (the lowest-
   loss of a few seeds); sparse autoencoders (`labpy.toy.sae`) with 2n latents, one per L1 coefficient, trained
   on its hidden activations h = W x and scored against the known features, the columns of W.

Two second looks were added after the first results, and the page says so: the phase diagram trained again
from an antipodal start (W = [1, −1]) — did random starts miss superposition where it is the better
solution? — and SAEs trained longer, on smaller batches, at a few L1 coefficients (`sae_long_*`) — was the first
sweep's weak recovery a matter of training length? The registered parts are unchanged by them.

Everything stored is small: per-feature and per-instance tables, and W itself in long form where a page draws it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..device import one_thread
from ..store import RunResult
from ..toy.sae import SparseAutoencoder, evaluate_sae, max_cosine, train_sae
from ..toy.superposition import (REPRESENTED, ToyModel, ToyRun, classify_two_features, dimensions_per_feature,
                                 features_frame, geometric_importance, instance_grid, sample_features, train_toy,
                                 weights_frame)
from ..validation import Rule, check_ranges, int_at_least, number_between, require
from .registry import Experiment, RunContext, register

DENSITY = Rule("a number in (0, 1]", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1)
SPARSITY = number_between(0, 1, high_open=True)
EVAL_SAMPLES = 20_000          # held-out activations that score each SAE


@dataclass(frozen=True)
class SuperpositionConfig:
    # 1. sparsity sweep (ReLU, then the GELU variant) and 2. the 5 → 2 geometry
    n_features: int = 20
    n_hidden: int = 5
    importance_decay: float = 0.9
    sparsities: tuple[float, ...] = (0.0, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 0.999)
    replicates: int = 3                     # seeds per setting, trained side by side
    geometry_features: int = 5
    geometry_hidden: int = 2
    geometry_sparsities: tuple[float, ...] = (0.0, 0.5, 0.8, 0.9, 0.95)
    steps: int = 5000
    batch_size: int = 1024
    lr: float = 1e-3
    # 3. phase diagram: 2 features, 1 neuron; feature 1 has importance 1, feature 2 has r
    phase_importances: tuple[float, ...] = (0.1, 0.193, 0.373, 0.72, 1.389, 2.683, 5.179, 10.0)
    phase_densities: tuple[float, ...] = (1.0, 0.398, 0.158, 0.0631, 0.0251, 0.01)
    phase_replicates: int = 2
    phase_steps: int = 4000
    # 4. sparse autoencoder on a toy model's hidden activations
    sae_features: int = 40
    sae_hidden: int = 10
    sae_sparsity: float = 0.97
    sae_toy_replicates: int = 3
    sae_latent_ratio: int = 2               # latents = ratio × features
    sae_l1: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
    sae_steps: int = 3000
    sae_lr: float = 1e-3
    # second look (added after the first results): longer SAE training, smaller batches
    sae_long_l1: tuple[float, ...] = (0.1, 0.3, 1.0)
    sae_long_steps: int = 10_000
    sae_long_batch: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_features", "n_hidden", "replicates", "geometry_features",
                                         "geometry_hidden", "steps", "batch_size", "phase_replicates",
                                         "phase_steps", "sae_features", "sae_hidden", "sae_toy_replicates",
                                         "sae_latent_ratio", "sae_steps", "sae_long_steps", "sae_long_batch"),
                     nonneg_int=("seed",), positive=("lr", "phase_importances", "sae_l1", "sae_lr", "sae_long_l1"),
                     rules={"importance_decay": number_between(0, 1), "sparsities": SPARSITY,
                            "geometry_sparsities": SPARSITY, "sae_sparsity": SPARSITY,
                            "phase_densities": DENSITY, "n_features": int_at_least(2)},
                     nonempty=("sparsities", "geometry_sparsities", "phase_importances", "phase_densities", "sae_l1",
                               "sae_long_l1"))
        require_fewer_hidden(self, (("n_features", "n_hidden"), ("geometry_features", "geometry_hidden"),
                                    ("sae_features", "sae_hidden")))


def require_fewer_hidden(config: Any, pairs: tuple[tuple[str, str], ...]) -> None:
    """For each (features field, hidden field) of `config`: one clear error unless there are fewer hidden dimensions
    than features, which superposition needs."""
    for many, few in pairs:
        require(config, getattr(config, few) < getattr(config, many), few,
                f"is out of range; superposition needs fewer hidden dimensions than features, so it must be < "
                f"{many} = {getattr(config, many)}")


def trained_sweep(config: SuperpositionConfig, n: int, m: int, sparsities: tuple[float, ...], activation: str,
                  seed: int) -> tuple[ToyModel, ToyRun, pd.DataFrame, torch.Tensor]:
    """Every sparsity × replicate as one batched model, trained: the model, its run, one row of labels per instance
    (sparsity, replicate, activation) and the importance (I, n)."""
    labels = instance_grid(sparsity=sparsities, replicate=range(config.replicates))
    I = len(labels)
    probability = torch.tensor(1 - labels.sparsity.to_numpy(), dtype=torch.float32)[:, None].expand(I, n)  # (I, n)
    importance = geometric_importance(n, config.importance_decay).expand(I, n)                          # (I, n)
    model = ToyModel(I, n, m, activation, seed=seed)
    result = train_toy(model, probability, importance, config.steps, config.batch_size, config.lr, seed=seed + 1,
                       log_every=max(1, config.steps // 20))
    return model, result, labels.assign(activation=activation), importance


def sweep_tables(model: ToyModel, result: ToyRun, labels: pd.DataFrame, importance: torch.Tensor
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A trained sweep's per-feature table, per-instance table, W in long form, and the training curve (loss and
    features represented at 21 points)."""
    W = model.W.detach()                                                                                 # (I, m, n)
    features = features_frame(W, importance, labels)
    instances = labels.assign(loss=result.loss.numpy(),
                              represented=features.groupby("instance").represented.sum().to_numpy(),
                              dims_per_feature=dimensions_per_feature(W).numpy())
    curve = result.curve.merge(labels, left_on="instance", right_index=True)
    return features, instances, weights_frame(W, labels), curve


def sparsity_sweep(config: SuperpositionConfig, n: int, m: int, sparsities: tuple[float, ...], activation: str,
                   seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """`trained_sweep`, as `sweep_tables`."""
    return sweep_tables(*trained_sweep(config, n, m, sparsities, activation, seed))


def phase_diagram(config: SuperpositionConfig, seed: int, antipodal_start: bool = False) -> pd.DataFrame:
    """2 features into 1 neuron at every (density, relative importance, replicate): weights, loss and phase.

    `antipodal_start`: one replicate per cell, started from W = [1, −1], b = 0 instead of a random W — whether
    training can *keep* superposition where random starts did not find it."""
    labels = instance_grid(density=config.phase_densities, relative_importance=config.phase_importances,
                           replicate=range(1 if antipodal_start else config.phase_replicates))
    I = len(labels)
    probability = torch.tensor(labels.density.to_numpy(), dtype=torch.float32)[:, None].expand(I, 2)
    importance = torch.stack([torch.ones(I), torch.tensor(labels.relative_importance.to_numpy(),
                                                          dtype=torch.float32)], dim=1)                   # (I, 2)
    model = ToyModel(I, 2, 1, seed=seed)
    if antipodal_start:
        with torch.no_grad():
            model.W.copy_(torch.tensor([1.0, -1.0]).expand(I, 1, 2))
    result = train_toy(model, probability, importance, config.phase_steps, config.batch_size, config.lr,
                       seed=seed + 1)
    W, b = model.W.detach(), model.b.detach()                                             # (I, 1, 2), (I, 2)
    return labels.assign(w1=W[:, 0, 0].numpy(), w2=W[:, 0, 1].numpy(), b1=b[:, 0].numpy(), b2=b[:, 1].numpy(),
                         loss=result.loss.numpy(), phase=classify_two_features(W))


def sae_sweep(W: torch.Tensor, probability: torch.Tensor, truth: torch.Tensor, l1_values: tuple[float, ...],
              n_latents: int, steps: int, batch: int, lr: float, seed: int) -> dict[str, pd.DataFrame]:
    """One SAE per L1 coefficient, trained side by side on fresh activations h = W x (W: (m, n), probability:
    (n,)); scored on held-out activations against `truth`, the represented columns of W, (n_rep, m)."""
    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def activations(step: int) -> torch.Tensor:
        x = sample_features(batch, probability[None], generator)[0]                                     # (B, n)
        return x @ W.T                                                                    # (B, m): h = W x

    l1 = torch.tensor(l1_values, dtype=torch.float32)                                                   # (I_sae,)
    sae = SparseAutoencoder(len(l1), W.shape[0], n_latents, seed=seed + 1)
    curve = train_sae(sae, activations, l1, steps, lr=lr)
    x_eval = sample_features(EVAL_SAMPLES, probability[None], torch.Generator().manual_seed(seed + 2))[0]  # (N, n)
    h_eval = x_eval @ W.T                                                                                # (N, m)
    scores = evaluate_sae(sae, h_eval, truth).assign(l1_coefficient=l1_values,
                                                     true_l0=float((x_eval > 0).sum(-1).float().mean()))
    with torch.no_grad():
        alive = (sae.encode(h_eval) > 0).any(1)                                                          # (I_sae, L)
        cosines = pd.DataFrame([{"l1_coefficient": c, "feature": i, "max_cosine": v}
                                for k, c in enumerate(l1_values)
                                for i, v in enumerate(max_cosine(W.T, sae.W_dec[k][alive[k]]).tolist()
                                                      if alive[k].any() else [0.0] * W.shape[1])])
    curve["l1_coefficient"] = curve.instance.map(dict(enumerate(l1_values)))
    return {"sae": scores, "sae_curve": curve, "sae_cosines": cosines}


def lowest_loss_toy(n: int, m: int, sparsity: float, replicates: int, steps: int, batch_size: int, lr: float,
                    seed: int, labels: dict | None = None) -> tuple[torch.Tensor, pd.DataFrame]:
    """The toy model an SAE reads: `replicates` seeds at one sparsity with uniform importance (every feature worth
    representing equally), trained side by side; the lowest-loss one's W (m, n) and its per-feature table, with
    `labels` and its `toy_loss` as columns."""
    probability = torch.full((replicates, n), 1 - sparsity)
    importance = torch.ones(replicates, n)
    toy = ToyModel(replicates, n, m, seed=seed)
    result = train_toy(toy, probability, importance, steps, batch_size, lr, seed=seed + 1)
    best = int(result.loss.argmin())
    W = toy.W.detach()[best]                                                                            # (m, n)
    frame = pd.DataFrame([{**(labels or {}), "toy_loss": result.loss[best].item()}])
    return W, features_frame(W[None], importance[:1], frame)


def represented_columns(W: torch.Tensor, features: pd.DataFrame) -> torch.Tensor:
    """(m, n) -> (n_rep, m): the directions of the represented features, what an SAE should recover."""
    return W.T[torch.as_tensor(features.represented.to_numpy(copy=True))]


def sae_part(config: SuperpositionConfig, seed: int) -> dict[str, pd.DataFrame]:
    """Train the toy model (lowest loss of a few seeds), then the SAE sweeps on its activations: the registered
    one and the longer second look, each row labelled by `training`."""
    n, m = config.sae_features, config.sae_hidden
    W, toy_features = lowest_loss_toy(n, m, config.sae_sparsity, config.sae_toy_replicates, config.steps,
                                      config.batch_size, config.lr, seed)
    truth = represented_columns(W, toy_features)                                                       # (n_rep, m)
    probability = torch.full((n,), 1 - config.sae_sparsity)
    n_latents = config.sae_latent_ratio * n
    sweeps = {"registered": sae_sweep(W, probability, truth, config.sae_l1, n_latents, config.sae_steps,
                                      config.batch_size, config.sae_lr, seed + 2),
              "long": sae_sweep(W, probability, truth, config.sae_long_l1, n_latents, config.sae_long_steps,
                                config.sae_long_batch, config.sae_lr, seed + 12)}
    tables = {name: pd.concat([sweep[name].assign(training=label) for label, sweep in sweeps.items()],
                              ignore_index=True) for name in ("sae", "sae_curve", "sae_cosines")}
    tables["sae_cosines"] = tables["sae_cosines"].merge(toy_features[["feature", "norm", "represented"]], on="feature")
    return {**tables, "sae_toy": toy_features}


def run(config: SuperpositionConfig, ctx: RunContext) -> RunResult:
    parts = ("sweep (ReLU)", "sweep (GELU)", "5 → 2 geometry", "phase diagram", "phase diagram, antipodal start",
             "sparse autoencoders")
    bar = tqdm(total=len(parts), desc="superposition", leave=False,
               disable=None if ctx.progress is None else not ctx.progress)
    seconds: dict[str, float] = {}
    base = 1000 * config.seed

    def timed(part: str, fn: Callable[[], Any]) -> Any:
        bar.set_postfix_str(part)
        t0 = time.perf_counter()
        out = fn()
        seconds[part] = round(time.perf_counter() - t0, 1)
        bar.update()
        return out

    with one_thread():
        relu = timed(parts[0], lambda: sparsity_sweep(config, config.n_features, config.n_hidden, config.sparsities,
                                                      "relu", seed=base))
        gelu = timed(parts[1], lambda: sparsity_sweep(config, config.n_features, config.n_hidden, config.sparsities,
                                                      "gelu", seed=base + 10))
        _, geometry_instances, geometry_weights, _ = timed(parts[2], lambda: sparsity_sweep(
            config, config.geometry_features, config.geometry_hidden, config.geometry_sparsities, "relu",
            seed=base + 20))
        phase = timed(parts[3], lambda: phase_diagram(config, seed=base + 30))
        phase_antipodal = timed(parts[4], lambda: phase_diagram(config, seed=base + 35, antipodal_start=True))
        sae = timed(parts[5], lambda: sae_part(config, seed=base + 40))
    bar.close()
    tables = {"sweep_features": pd.concat([relu[0], gelu[0]], ignore_index=True),
              "sweep_instances": pd.concat([relu[1], gelu[1]], ignore_index=True),
              "sweep_curve": pd.concat([relu[3], gelu[3]], ignore_index=True),
              "geometry_instances": geometry_instances, "geometry_weights": geometry_weights,
              "phase": phase, "phase_antipodal": phase_antipodal, **sae}
    registered = tables["sae"][tables["sae"].training == "registered"]
    summary = {"represented_threshold": REPRESENTED,
               "sae_latents": config.sae_latent_ratio * config.sae_features,
               "sae_toy_represented": int(tables["sae_toy"].represented.sum()),
               "sae_best_mmcs": float(registered.mmcs.max()),
               "sae_best_l1": float(registered.l1_coefficient[registered.mmcs.idxmax()]),
               "seconds_per_part": seconds}
    return RunResult(tables=tables, summary=summary, seed=config.seed)


SMOKE = SuperpositionConfig(n_features=6, n_hidden=2, sparsities=(0.0, 0.9), replicates=1,
                            geometry_sparsities=(0.0, 0.9), steps=40, batch_size=64, phase_importances=(0.5, 2.0),
                            phase_densities=(1.0, 0.1), phase_replicates=1, phase_steps=40, sae_features=8,
                            sae_hidden=3, sae_toy_replicates=1, sae_l1=(0.01, 0.1), sae_steps=40, sae_long_l1=(0.1,),
                            sae_long_steps=60, sae_long_batch=32)

register(Experiment(
    name="superposition",
    title="Toy models of superposition: sparsity, geometry, a phase diagram, GELU, and a sparse autoencoder",
    track="Toy models",
    page="experiments/superposition.qmd",
    version=1,
    config_type=SuperpositionConfig,
    scales={"smoke": {"toy": SMOKE}, "cpu": {"toy": SuperpositionConfig()}},
    run=run,
    description="Elhage et al.'s ReLU output model over sparsity (n=20→m=5, 5→2) and the 2→1 phase diagram, the "
                "same sweep with a GELU output, and SAEs over an L1 sweep scored against the toy model's known "
                "features.",
    device="cpu",
))
