"""Which arrangement of two sparsity classes is the better solution? The two-class model trained from chosen starts.

`superposition_variants` trained the two-class toy model (ten features at density 0.3, ten sparser, 20 → 5, equal
importance) from random starts: as the sparse class B got sparser it gave way step by step, and its antipodal pairs
joined the dense class A about as often as not. Two things random starts cannot say: whether keeping only A (five
A–A pairs) is the lower loss, and whether, for the same features kept, mixed A–B pairs beat A–A and B–B pairs, as
a hand argument says (a pair pays for its overlap when both features are present, p_i p_j, and 2 p_A p_B ≤
p_A² + p_B²). So this experiment builds those arrangements by hand, one pair per hidden dimension, trains each
(and a few random starts) at every density, and scores all of them on one shared evaluation batch per density,
so that their losses differ by the model and not by the sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from ..device import one_thread
from ..store import RunResult
from ..toy.superposition import (REPRESENTED, ToyModel, antipodal_partners, feature_norms, instance_grid,
                                 mutual_pairs, sample_features, toy_loss, train_toy)
from ..validation import check_ranges, require
from .registry import Experiment, RunContext, register
from .superposition import DENSITY

# Hand-built starts for 10 A features (0-9) and 10 B features (10-19) in 5 dimensions: the pairs on each axis.
STARTS: dict[str, tuple[tuple[int, int], ...]] = {
    "all A": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)),
    "6 A + 4 B, sorted": ((0, 1), (2, 3), (4, 5), (10, 11), (12, 13)),
    "6 A + 4 B, mixed": ((0, 10), (1, 11), (2, 12), (3, 13), (4, 5)),
}


@dataclass(frozen=True)
class TwoClassStartsConfig:
    dense_density: float = 0.3
    sparse_densities: tuple[float, ...] = (0.25, 0.2, 0.15, 0.1)
    random_starts: int = 3
    start_noise: float = 0.01                   # added to the hand-built W, so that no symmetry pins it
    steps: int = 5000
    batch_size: int = 1024
    lr: float = 1e-3
    eval_samples: int = 200_000                 # the shared evaluation batch per density
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("steps", "batch_size", "eval_samples"), positive=("lr",),
                     nonneg=("start_noise",), nonneg_int=("random_starts", "seed"),
                     rules={"dense_density": DENSITY, "sparse_densities": DENSITY}, nonempty=("sparse_densities",))
        require(self, all(p < self.dense_density for p in self.sparse_densities), "sparse_densities",
                f"is out of range; every one must be below dense_density = {self.dense_density}")


def hand_built(pairs: tuple[tuple[int, int], ...], n_features: int, n_hidden: int) -> torch.Tensor:
    """(m, n): pair k's features at +e_k and −e_k, every other feature at 0."""
    W = torch.zeros(n_hidden, n_features)
    for k, (i, j) in enumerate(pairs):
        W[k, i], W[k, j] = 1.0, -1.0
    return W


def class_arrangement(kept: Sequence[bool], partners: Sequence[int], half: int) -> dict:
    """Features kept per class (A: the first `half`) and antipodal pairs (mutual partners, `antipodal_partners`),
    mixed or not, of one model, from its per-feature flags and partners."""
    pairs = mutual_pairs(list(partners))
    return {"A kept": int(sum(kept[:half])), "B kept": int(sum(kept[half:])), "pairs": len(pairs),
            "mixed pairs": sum((i < half) != (j < half) for i, j in pairs),
            "pair list": " ".join(f"{i}-{j}" for i, j in pairs)}


def arrangement(W: torch.Tensor, half: int) -> dict:
    """`class_arrangement` of one model's W (m, n)."""
    return class_arrangement((feature_norms(W) > REPRESENTED).tolist(), antipodal_partners(W).tolist(), half)


def run(config: TwoClassStartsConfig, ctx: RunContext) -> RunResult:
    n, m = 20, 5
    starts = [*STARTS, *(f"random {k}" for k in range(config.random_starts))]
    labels = instance_grid(sparse_density=config.sparse_densities, start=range(len(starts)))
    labels["start"] = labels.start.map(dict(enumerate(starts)))
    I = len(labels)
    is_b = torch.arange(n) >= n // 2
    probability = torch.where(is_b, torch.tensor(labels.sparse_density.to_numpy(), dtype=torch.float32)[:, None],
                              torch.tensor(config.dense_density))                                       # (I, n)
    importance = torch.ones(I, n)
    model = ToyModel(I, n, m, seed=config.seed)
    noise = torch.Generator().manual_seed(config.seed + 7)
    with torch.no_grad():
        for k, start in enumerate(labels.start):
            if start in STARTS:
                model.W[k] = hand_built(STARTS[start], n, m) + config.start_noise * torch.randn(m, n, generator=noise)
    W0 = model.W.detach().clone()
    with one_thread():
        train_toy(model, probability, importance, config.steps, config.batch_size, config.lr, seed=config.seed + 1)
        rows = []
        for density, group in labels.groupby("sparse_density"):
            index = torch.as_tensor(group.index.to_numpy(copy=True))
            x = sample_features(config.eval_samples, probability[index[:1]],
                                torch.Generator().manual_seed(config.seed + 99))                        # (1, N, n)
            with torch.no_grad():
                sub = ToyModel(len(index), n, m)
                sub.W.copy_(model.W[index]), sub.b.copy_(model.b[index])
                losses = toy_loss(sub, x.expand(len(index), -1, -1), importance[index])                 # (k,)
            for k, loss in zip(group.index, losses.tolist()):
                rows.append({"instance": int(k), "loss": loss,
                             **{f"start {key}": v for key, v in arrangement(W0[k], n // 2).items()},
                             **arrangement(model.W.detach()[k], n // 2)})
    instances = labels.join(pd.DataFrame(rows).set_index("instance"))
    weights = pd.DataFrame([{"instance": k, "feature": i, "norm": float(v)}
                            for k, norms in enumerate(feature_norms(model.W.detach())) for i, v in enumerate(norms)])
    return RunResult(tables={"instances": instances.reset_index(drop=True), "norms": weights},
                     summary={"starts": starts}, seed=config.seed)


register(Experiment(
    name="two_class_starts",
    title="Two sparsity classes from hand-built starts: is the all-dense solution best, and do mixed pairs win?",
    track="Toy models",
    page="experiments/superposition.qmd",
    version=1,
    config_type=TwoClassStartsConfig,
    scales={"smoke": {"toy": TwoClassStartsConfig(sparse_densities=(0.1,), random_starts=1, steps=40, batch_size=64,
                                                  eval_samples=2000)},
            "cpu": {"toy": TwoClassStartsConfig()}},
    run=run,
    description="The 20 → 5 two-class model trained from all-A, sorted and mixed hand-built pairs and from random "
                "starts at four sparse densities, scored on one shared batch per density.",
    device="cpu",
))
