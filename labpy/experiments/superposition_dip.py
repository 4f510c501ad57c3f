"""Why a GELU output stops at antipodal pairs: its dip below zero, or its curve above zero?

GELU differs from ReLU in two ways: below zero it dips (to about −0.17 near −0.75) instead of staying at 0, and
above zero it bends (GELU(x) < x) instead of passing x. Two hybrids take one difference each
(`labpy.toy.superposition`): `relu_dip`, ReLU with GELU's dip added, and `gelu_no_dip`, GELU with its dip cut off
at 0. Each of the four output activations trains the page's sparsity sweep (n = 20 into m = 5, importance 0.9^i)
at the sparse end, where ReLU and GELU part, and the 5 → 2 geometry. Stored beside the sweep's usual tables: each
feature's output bias b_i, the part of the model a ReLU uses to cut off interference below zero. The `depths` run
(added after the first one's results) trains ReLU with GELU's dip scaled down (`DIP_DEPTHS`): how deep it must be.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..device import one_thread
from ..store import RunResult
from ..toy.superposition import DIP_DEPTHS
from ..validation import check_ranges, int_at_least, number_between, one_of
from .registry import Experiment, RunContext, register
from .superposition import SPARSITY, SuperpositionConfig, require_fewer_hidden, sweep_tables, trained_sweep

DIP_ACTIVATIONS = ("relu", "relu_dip", "gelu_no_dip", "gelu")
DEPTH_ACTIVATIONS = tuple(f"relu_dip_{d:g}" for d in DIP_DEPTHS)     # the `depths` run: ReLU with shallower dips


@dataclass(frozen=True)
class SuperpositionDipConfig:
    activations: tuple[str, ...] = DIP_ACTIVATIONS
    n_features: int = 20
    n_hidden: int = 5
    sparsities: tuple[float, ...] = (0.9, 0.95, 0.97, 0.99, 0.999)
    geometry_features: int = 5
    geometry_hidden: int = 2
    geometry_sparsities: tuple[float, ...] = (0.9, 0.95, 0.99)
    replicates: int = 3
    steps: int = 5000
    batch_size: int = 1024
    lr: float = 1e-3
    importance_decay: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_features", "n_hidden", "geometry_features", "geometry_hidden",
                                         "replicates", "steps", "batch_size"),
                     positive=("lr",), nonneg_int=("seed",),
                     nonempty=("activations", "sparsities", "geometry_sparsities"),
                     rules={"activations": one_of(*DIP_ACTIVATIONS, *DEPTH_ACTIVATIONS), "sparsities": SPARSITY,
                            "geometry_sparsities": SPARSITY, "importance_decay": number_between(0, 1),
                            "n_features": int_at_least(2), "geometry_features": int_at_least(2)})
        require_fewer_hidden(self, (("n_features", "n_hidden"), ("geometry_features", "geometry_hidden")))

    def sweep_config(self) -> SuperpositionConfig:
        """The page's `SuperpositionConfig` with this run's sizes, training and sweeps."""
        return SuperpositionConfig(n_features=self.n_features, n_hidden=self.n_hidden, sparsities=self.sparsities,
                                   replicates=self.replicates, geometry_features=self.geometry_features,
                                   geometry_hidden=self.geometry_hidden, geometry_sparsities=self.geometry_sparsities,
                                   steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                                   importance_decay=self.importance_decay)


def sweep_with_bias(config: SuperpositionConfig, n: int, m: int, sparsities: tuple[float, ...], activation: str,
                    seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """`sweep_tables` (features, instances, W in long form) with each feature's output bias in the features, and the
    instance as a column of the instances (so that it survives stacking several activations' tables)."""
    model, result, labels, importance = trained_sweep(config, n, m, sparsities, activation, seed)
    features, instances, weights, _ = sweep_tables(model, result, labels, importance)
    features["bias"] = model.b.detach().reshape(-1).numpy()                    # (I · n,), instance-major as features
    return features, instances.rename_axis("instance").reset_index(), weights


def run(config: SuperpositionDipConfig, ctx: RunContext) -> RunResult:
    sweep = config.sweep_config()
    parts: dict[str, list[pd.DataFrame]] = {"sweep_features": [], "sweep_instances": [], "geometry_features": [],
                                            "geometry_instances": [], "geometry_weights": []}
    with one_thread():
        for k, activation in enumerate(config.activations):
            seed = 1000 * config.seed + 10 * k                # one seed per activation, shared by sweep and geometry
            features, instances, _ = sweep_with_bias(sweep, config.n_features, config.n_hidden, config.sparsities,
                                                     activation, seed)
            parts["sweep_features"].append(features)
            parts["sweep_instances"].append(instances)
            features, instances, weights = sweep_with_bias(sweep, config.geometry_features, config.geometry_hidden,
                                                           config.geometry_sparsities, activation, seed + 5)
            parts["geometry_features"].append(features)
            parts["geometry_instances"].append(instances)
            parts["geometry_weights"].append(weights)
    tables = {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}
    return RunResult(tables=tables, summary={"instances": len(tables["sweep_instances"])}, seed=config.seed)


register(Experiment(
    name="superposition_dip",
    title="Why GELU stops at antipodal pairs: ReLU with GELU's dip, and GELU without it",
    track="Toy models",
    page="experiments/superposition.qmd",
    version=1,
    config_type=SuperpositionDipConfig,
    scales={"smoke": {"toy": SuperpositionDipConfig(n_features=6, n_hidden=2, sparsities=(0.9, 0.99),
                                                    geometry_sparsities=(0.9,), replicates=1, steps=40,
                                                    batch_size=64)},
            # "depths" (added after the "toy" run's results): ReLU with dips 0.03 to 0.5 times GELU's
            "cpu": {"toy": SuperpositionDipConfig(), "depths": SuperpositionDipConfig(activations=DEPTH_ACTIVATIONS)}},
    run=run,
    description="The 20 → 5 and 5 → 2 toy models of superposition at S ≥ 0.9 with four output activations: ReLU, "
                "ReLU with GELU's dip, GELU without its dip, and GELU; and ReLU with the dip 0.03 to 0.5 times as "
                "deep.",
    device="cpu",
))
