"""Toy Models of Superposition (Elhage et al. 2022): the ReLU output model, batched over instances.

    h  = W x                  x: n sparse features, h: m < n hidden dimensions
    x' = ReLU(Wᵀ h + b)       the only nonlinearity is on the output (GELU in the lab's variant)
    L  = Σ_i I_i (x_i − x'_i)²

Feature i is present with probability p_i = 1 − S_i, its value then uniform on [0, 1]; I_i is its importance.
Why batched: a sweep (sparsities × seeds) is one model whose parameters carry a leading "instance" dimension,
so the whole sweep trains in one loop of batched matrix products — the way Anthropic's notebook does it — instead of
hundreds of Python-level loops. Each instance's loss term depends only on its own parameters, and Adam's
update is per parameter, so instance k of a batched run is exactly the single model trained on instance k's
data (tests/test_superposition.py checks it).

Why not `labpy.train.train`: it clips the *global* gradient norm (which would couple the instances) and
measures Adam's state every few steps, which costs more than a step of these models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

def relu_with_dip(x: torch.Tensor, depth: float = 1.0) -> torch.Tensor:
    """ReLU plus GELU's dip below zero (its minimum, about −0.17 near x = −0.75) scaled by `depth`: GELU's negative
    part on ReLU's sharp corner, to tell which of GELU's two differences from ReLU does what, and how much of it."""
    return F.relu(x) + depth * F.gelu(x).clamp(max=0)


def gelu_without_dip(x: torch.Tensor) -> torch.Tensor:
    """GELU with its dip cut off at 0: GELU's curve above zero, ReLU's flat zero below."""
    return F.gelu(x).clamp(min=0)


DIP_DEPTHS = (0.03, 0.1, 0.2, 0.3, 0.5)         # `relu_dip_<depth>`: ReLU with a shallower dip than GELU's
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "relu_dip": relu_with_dip, "gelu_no_dip": gelu_without_dip,
               **{f"relu_dip_{d:g}": partial(relu_with_dip, depth=d) for d in DIP_DEPTHS},
               "linear": torch.nn.Identity()}    # the paper's baseline x' = WᵀWx + b: no superposition
REPRESENTED = 0.5       # ‖W_i‖ above this: feature i is represented (the paper's and the notebook's rule)


class ToyModel(nn.Module):
    """`n_instances` independent output models (ReLU, or another of ACTIVATIONS) in one set of tensors.

    W[k] is instance k's m × n matrix, so its *columns* W[k, :, i] are the feature directions in hidden space.
    """

    def __init__(self, n_instances: int, n_features: int, n_hidden: int, activation: str = "relu",
                 seed: int = 0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: use one of {', '.join(ACTIVATIONS)}")
        self.activation = activation
        generator = torch.Generator().manual_seed(seed)
        std = (2 / (n_features + n_hidden)) ** 0.5          # Xavier-normal, per instance
        self.W = nn.Parameter(torch.randn(n_instances, n_hidden, n_features, generator=generator) * std)  # (I, m, n)
        self.b = nn.Parameter(torch.zeros(n_instances, n_features))                                     # (I, n)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """(I, B, n) -> (I, B, m): the bottleneck activations h = W x."""
        return torch.bmm(x, self.W.transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(I, B, n) -> (I, B, n): x' = act(Wᵀ W x + b).

        Through the n × n Gram matrix WᵀW (entry ij: W_i · W_j, how much feature j leaks into feature i's
        readout) rather than through h: one batched product forward and one backward instead of five, as the
        inputs need no gradient — a fifth faster at n = 20, m = 5."""
        gram = torch.bmm(self.W.transpose(1, 2), self.W)                        # (I, n, n)
        out = torch.baddbmm(self.b.unsqueeze(1), x, gram)                       # (I, B, n)
        return ACTIVATIONS[self.activation](out)


def sample_features(batch: int, probability: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(I, B, n) sparse features: each present with its probability (I, n), its value then uniform on [0, 1].

    One uniform draw u per entry does both jobs: the feature is present when u < p, and then u / p is uniform
    on [0, 1) — half the random numbers of drawing presence and value apart (they are most of a step's cost).
    """
    p = probability.unsqueeze(1)                                                 # (I, 1, n)
    u = torch.rand((probability.shape[0], batch, probability.shape[1]), generator=generator)
    return torch.where(u < p, u / p, torch.zeros(()))


def toy_loss(model: ToyModel, x: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """(I,) importance-weighted squared error per instance, mean over batch and features (the notebook's scale).
    x: (I, B, n); importance: (I, n)."""
    return (importance.unsqueeze(1) * (x - model(x)) ** 2).mean(dim=(1, 2))


@dataclass
class ToyRun:
    model: ToyModel
    probability: torch.Tensor      # (I, n)
    importance: torch.Tensor       # (I, n)
    loss: torch.Tensor             # (I,) final loss on a fixed evaluation batch
    curve: pd.DataFrame            # step, instance, loss, represented: every `log_every` steps


def train_toy(model: ToyModel, probability: torch.Tensor, importance: torch.Tensor, steps: int,
              batch_size: int = 1024, lr: float = 1e-3, seed: int = 0, log_every: int = 0,
              eval_batch: int = 10_000) -> ToyRun:
    """Adam at a constant rate on fresh batches; the instances' losses are summed so that none scales another's
    gradient. Deterministic by `seed` (one generator feeds every batch, in order)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rows = []
    for step in range(steps):
        x = sample_features(batch_size, probability, generator)                 # (I, B, n)
        loss = toy_loss(model, x, importance)                                    # (I,)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            kept = (feature_norms(model.W.detach()) > REPRESENTED).sum(-1)                     # (I,)
            rows += [{"step": step, "instance": k, "loss": v, "represented": r}
                     for k, (v, r) in enumerate(zip(loss.tolist(), kept.tolist()))]
    with torch.no_grad():
        x = sample_features(eval_batch, probability, torch.Generator().manual_seed(seed + 1_000_003))
        final = toy_loss(model, x, importance)
    curve = pd.DataFrame(rows, columns=["step", "instance", "loss", "represented"])
    return ToyRun(model, probability, importance, final, curve)


def geometric_importance(n_features: int, decay: float) -> torch.Tensor:
    """(n,) I_i = decay^i: feature 0 matters most."""
    return decay ** torch.arange(n_features, dtype=torch.float32)


# ---- what a trained W says -------------------------------------------------------------------------------

def feature_norms(W: torch.Tensor) -> torch.Tensor:
    """(..., m, n) -> (..., n): ‖W_i‖, the length of feature i's direction."""
    return W.norm(dim=-2)


def feature_dimensionality(W: torch.Tensor) -> torch.Tensor:
    """(..., m, n) -> (..., n): D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)², the share of a dimension feature i gets.

    1 for a feature alone in its dimension, 1/2 for an antipodal pair, 2/5 for a regular pentagon in a plane;
    NaN for a feature with W_i = 0 (it has no direction).
    """
    norms = feature_norms(W)                                                     # (..., n)
    unit = W / norms.unsqueeze(-2)                                               # (..., m, n)
    overlaps = torch.einsum("...mi,...mj->...ij", unit, W)                       # (..., n, n): Ŵ_i · W_j
    return norms ** 2 / (overlaps ** 2).sum(dim=-1)


def interference(W: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """(..., m, n), (n,) bool -> (..., n): Σ_j (Ŵ_i · W_j)² over the features j ≠ i marked in `sources`, how much
    of feature i's readout direction those features fill (the off-diagonal part of D_i's denominator).
    NaN for a feature with W_i = 0."""
    unit = W / feature_norms(W).unsqueeze(-2)                                    # (..., m, n)
    overlaps = torch.einsum("...mi,...mj->...ij", unit, W) ** 2                  # (..., n, n)
    n = W.shape[-1]
    keep = sources[None, :] & ~torch.eye(n, dtype=torch.bool, device=W.device)  # (n, n): row i, column j
    return (overlaps * keep).sum(-1)


def antipodal_partners(W: torch.Tensor, cosine: float = -0.9) -> torch.Tensor:
    """(..., m, n) -> (..., n) long: for each represented feature, the represented feature pointing most nearly the
    opposite way if their cosine is below `cosine` (an antipodal pair), else −1."""
    norms = feature_norms(W)                                                     # (..., n)
    unit = W / norms.unsqueeze(-2).clamp_min(1e-12)
    cos = torch.einsum("...mi,...mj->...ij", unit, unit)                         # (..., n, n)
    kept = norms > REPRESENTED
    n = W.shape[-1]
    eligible = kept.unsqueeze(-1) & kept.unsqueeze(-2) & ~torch.eye(n, dtype=torch.bool, device=W.device)
    cos = torch.where(eligible, cos, torch.full_like(cos, 2.0))
    best, partner = cos.min(-1)
    return torch.where(best < cosine, partner, torch.full_like(partner, -1))


def mutual_pairs(partners: Sequence[int]) -> list[tuple[int, int]]:
    """The antipodal pairs (i, j), i < j, of one model: features that are each other's partner
    (`antipodal_partners`, −1 for none)."""
    return [(i, j) for i, j in enumerate(partners) if j > i and partners[j] == i]


def dimensions_per_feature(W: torch.Tensor) -> torch.Tensor:
    """(..., m, n) -> (...): m / ‖W‖_F², the paper's summary of how many dimensions a feature gets on average."""
    return W.shape[-2] / (W ** 2).sum(dim=(-2, -1))


PHASES = ("feature 1 only", "superposition", "feature 2 only", "neither", "both, not antipodal")


def classify_two_features(W: torch.Tensor, threshold: float = REPRESENTED) -> list[str]:
    """The phase of each 2-feature / 1-neuron model, from W of shape (I, 1, 2).

    A feature is represented when |W_i| > threshold (features are in [0, 1], so a kept feature has weight ≈ 1).
    Both represented with opposite signs is antipodal superposition: the output ReLU and a negative bias
    filter out the other feature's interference. Both with the same sign cannot be told apart at the output,
    so it is its own (not expected) class.
    """
    w = W[:, 0, :]                                                               # (I, 2)
    kept = w.abs() > threshold
    phases = []
    for (k1, k2), (w1, w2) in zip(kept.tolist(), w.tolist()):
        if k1 and k2:
            phases.append("superposition" if w1 * w2 < 0 else "both, not antipodal")
        elif k1:
            phases.append("feature 1 only")
        elif k2:
            phases.append("feature 2 only")
        else:
            phases.append("neither")
    return phases


def weights_frame(W: torch.Tensor, labels: pd.DataFrame) -> pd.DataFrame:
    """W (I, m, n) in long form, one row per (instance, hidden unit, feature), beside each instance's labels."""
    I, m, n = W.shape
    index = pd.MultiIndex.from_product([range(I), range(m), range(n)], names=["instance", "hidden", "feature"])
    frame = pd.DataFrame({"weight": W.detach().reshape(-1).numpy()}, index=index).reset_index()
    return frame.merge(labels, left_on="instance", right_index=True)


def features_frame(W: torch.Tensor, importance: torch.Tensor, labels: pd.DataFrame) -> pd.DataFrame:
    """One row per (instance, feature): its norm, dimensionality, whether it is represented, its importance."""
    I, _, n = W.shape
    norms, dims = feature_norms(W.detach()), feature_dimensionality(W.detach())
    frame = pd.DataFrame({"instance": torch.arange(I).repeat_interleave(n).numpy(),
                          "feature": torch.arange(n).repeat(I).numpy(),
                          "norm": norms.reshape(-1).numpy(), "dimensionality": dims.reshape(-1).numpy(),
                          "importance": importance.expand(I, n).reshape(-1).numpy()})
    frame["represented"] = frame.norm > REPRESENTED
    return frame.merge(labels, left_on="instance", right_index=True)


def instance_grid(**axes: Sequence[float]) -> pd.DataFrame:
    """Every combination of the given axes, one row per instance (the first axis varies slowest)."""
    index = pd.MultiIndex.from_product(list(axes.values()), names=list(axes))
    return index.to_frame(index=False)
