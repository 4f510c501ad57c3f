"""Why do a top-k SAE's feature latents die at k = 8 but hold at k = 6?

`sae_topk_starts` started top-k SAEs on the S = 0.9 toy model's true features: at k = 6 they kept them, at k = 8 the
feature latents stopped firing and the SAE ended where a random start does. A latent in a top-k code gets a gradient
only when it is among an input's k largest; so a feature latent dies when, on the inputs where its feature is
present, other latents outrank it. This experiment repeats the feature start at k = 6 and 8 (the same recipe, seeds
and stream of activations) and follows, on a fixed set of held-out inputs during training:

- **the hit rate**: of the (input, present feature) pairs, the share where that feature's latent is in the code;
- **who takes the slots**: the share of the code's total activation on the spare latents (those not started on a
  feature), and the mean activation of a feature latent where its feature is present against that of a spare
  latent where it is in the code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..device import one_thread
from ..store import RunResult
from ..toy.sae import SparseAutoencoder
from ..validation import check_ranges, require
from .registry import Experiment, RunContext, register
from .sae_topk import SMOKE_SIZES, SaeTopKConfig, TopKAutoencoder, eval_features, fresh_topk, toy_for
from .sae_topk_starts import feature_start, train_probed


@dataclass(frozen=True)
class FeatureDeathConfig(SaeTopKConfig):
    """`sae_topk`'s toy and recipe, at the ks compared here, followed on `probe_inputs` held-out inputs."""

    ks: tuple[int, ...] = (6, 8)
    probe_inputs: int = 2000

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive_int=("probe_inputs",))
        require(self, self.probe_inputs <= 10_000, "probe_inputs",
                "is out of range; at most the 10,000 held-out inputs")


@torch.no_grad()
def slot_census(sae: TopKAutoencoder, x: torch.Tensor, W: torch.Tensor, represented: torch.Tensor) -> list[dict]:
    """Per instance: who holds the code's slots on inputs x (N, n) of the toy W (m, n), when latent j < n_rep was
    started on the j-th represented feature (`represented`: (n,) bool) and the rest are spare."""
    h = x @ W.T                                                                          # (N, m)
    code = sae.encode(h)                                                                 # (I, N, L)
    pre = SparseAutoencoder.encode(sae, h)                                               # (I, N, L), ReLU'd
    n_rep = int(represented.sum())
    present = x[:, represented] > 0                                                      # (N, n_rep)
    rows = []
    for i in range(code.shape[0]):
        feature_code, spare_code = code[i, :, :n_rep], code[i, :, n_rep:]
        spare_on = spare_code > 0
        rows.append({
            "hit_rate": float((feature_code > 0)[present].float().mean()),
            "spare_share": float(spare_code.sum() / code[i].sum().clamp_min(1e-12)),
            "feature_act": float(pre[i, :, :n_rep][present].mean()),
            "spare_act": float(spare_code[spare_on].mean()) if spare_on.any() else 0.0})
    return rows


def run(config: FeatureDeathConfig, ctx: RunContext) -> RunResult:
    with one_thread():
        W, features, truth, probability = toy_for(config)
        represented = torch.as_tensor(features.represented.to_numpy(copy=True))
        x_probe = eval_features(config, probability)[:config.probe_inputs]                 # (N, n)
        sae = feature_start(fresh_topk(config, W.shape[0]), truth)
        curve = train_probed(sae, config, W, probability, lambda s: slot_census(s, x_probe, W, represented))
    curve["k"] = curve.instance.map(dict(enumerate(config.ks)))
    return RunResult(tables={"curve": curve}, summary={"n_represented": int(represented.sum())}, seed=config.seed)


register(Experiment(
    name="sae_topk_feature_death",
    title="Why a top-k SAE's feature latents die at k = 8 but hold at k = 6",
    track="Toy models",
    page="experiments/superposition.qmd",
    version=1,
    config_type=FeatureDeathConfig,
    scales={"smoke": {"dense": FeatureDeathConfig(**SMOKE_SIZES, probe_inputs=200)},
            "cpu": {"dense": FeatureDeathConfig()}},
    run=run,
    description="Top-k SAEs at k = 6 and 8 started on the true features, followed during training: how often a present "
                "feature's latent makes the code, and how much of the code the spare latents take.",
    device="cpu",
))
