"""Does the loss prefer features or mixtures when a top-k SAE keeps too many latents? Start one at the features.

`sae_topk_mixtures` found that top-k SAEs with k = 6 and 8 on the S = 0.9 toy model (about four features active per
input) settle on dense codes that rebuild any input, none of their latents a feature. An oracle feature code beats
them by less than an encoder loses to interference, so whether training or the loss keeps them from the features
was left open. This experiment trains top-k SAEs at k = 4, 6 and 8 with `sae_topk`'s recipe, on the same stream of
activations, from three starts:

- **random**: `sae_topk`'s kind of initialisation;
- **features**: the first latents' decoder and encoder rows set to the represented features, the rest random;
- **raised from k = 4**: the random start's trained k = 4 SAE (in `sae_topk` a k = 4 SAE found every feature), trained
  on at the larger k.

The mean max cosine similarity to the features is logged during training, so a drift away from them shows when it
happens; the final SAEs are scored as in `sae_topk_mixtures`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from ..device import one_thread
from ..store import RunResult
from ..toy.sae import max_cosine, train_sae
from ..validation import check_ranges, require
from .registry import Experiment, RunContext, register
from .sae_topk import (SMOKE_SIZES, SaeTopKConfig, TopKAutoencoder, activation_sampler, eval_features, fresh_topk,
                       toy_for)
from .sae_topk_mixtures import all_scores, gaussian_inputs

STARTS = ("random", "features", "raised")


@dataclass(frozen=True)
class TopKStartsConfig(SaeTopKConfig):
    """`sae_topk`'s toy and recipe, at the ks compared here."""

    ks: tuple[int, ...] = (4, 6, 8)
    from_k: int = 4                       # the trained random-start SAE the "raised" start continues from
    random_inputs: int = 5000             # isotropic Gaussian inputs, as in sae_topk_mixtures

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive_int=("from_k", "random_inputs"))
        require(self, self.from_k in self.ks, "from_k", f"is out of range; it must be one of ks = {self.ks}")


def feature_start(sae: TopKAutoencoder, truth: torch.Tensor) -> TopKAutoencoder:
    """Set every instance's first n_rep latents to the features (n_rep, m): decoder rows and encoder columns, tied as
    at initialisation, encoder bias 0. The other latents keep their random start."""
    directions = F.normalize(truth, dim=-1)
    with torch.no_grad():
        sae.W_dec[:, :len(truth)] = directions
        sae.W_enc[:, :, :len(truth)] = directions.T
        sae.b_enc[:, :len(truth)] = 0
    return sae


def copied_start(sae: TopKAutoencoder, source: TopKAutoencoder, instance: int) -> TopKAutoencoder:
    """Every instance of `sae` set to `source`'s `instance` (its weights and biases; the ks stay `sae`'s)."""
    with torch.no_grad():
        for name in ("W_dec", "W_enc", "b_enc", "b_dec"):
            getattr(sae, name)[:] = getattr(source, name)[instance]
    return sae


def train_probed(sae: TopKAutoencoder, config: SaeTopKConfig, W: torch.Tensor, probability: torch.Tensor,
                 probe) -> pd.DataFrame:
    """Train with `sae_topk`'s recipe and stream, logging `probe(sae)` per instance; the curve opens with the probe
    of the start itself at step −1."""
    initial = pd.DataFrame(probe(sae)).assign(step=-1, instance=range(len(config.ks)))
    curve = train_sae(sae, activation_sampler(config, W, probability), torch.zeros(len(config.ks)), config.sae_steps,
                      lr=config.lr, probe=probe)
    return pd.concat([initial, curve], ignore_index=True)


def run(config: TopKStartsConfig, ctx: RunContext) -> RunResult:
    with one_thread():
        W, features, truth, probability = toy_for(config)
        fresh = lambda: fresh_topk(config, W.shape[0])                                    # noqa: E731

        def mmcs_probe(sae):
            return [{"mmcs": float(max_cosine(truth, sae.W_dec[i].detach()).mean())} for i in range(sae.W_dec.shape[0])]

        saes, curves = {}, []
        for start in STARTS:                      # "raised" last: it starts from the trained random start
            sae = {"random": fresh, "features": lambda: feature_start(fresh(), truth),
                   "raised": lambda: copied_start(fresh(), saes["random"], config.ks.index(config.from_k))}[start]()
            curves.append(train_probed(sae, config, W, probability, mmcs_probe).assign(start=start))
            saes[start] = sae
        x_eval = eval_features(config, probability)
        h_eval = x_eval @ W.T                                                                    # (N, m)
        h_random = gaussian_inputs(config, h_eval, config.random_inputs)
        scores = pd.concat([all_scores(sae, truth, h_eval, h_random).assign(start=start, k=list(config.ks))
                            for start, sae in saes.items()], ignore_index=True)
    curve = pd.concat(curves, ignore_index=True)
    curve["k"] = curve.instance.map(dict(enumerate(config.ks)))
    return RunResult(tables={"scores": scores, "curve": curve},
                     summary={"n_represented": int(features.represented.sum()),
                              "true_l0": float((x_eval > 0).sum(-1).float().mean())},
                     seed=config.seed)


register(Experiment(
    name="sae_topk_starts",
    title="Top-k SAEs with too large a k, started at the features",
    track="Toy models",
    page="experiments/superposition.qmd",
    version=1,
    config_type=TopKStartsConfig,
    scales={"smoke": {"dense": TopKStartsConfig(**SMOKE_SIZES, from_k=1, random_inputs=200)},
            "cpu": {"dense": TopKStartsConfig()}},
    run=run,
    description="Top-k SAEs at k = 4, 6 and 8 on the S = 0.9 toy model from a random start, from the true features, "
                "and from the trained k = 4 SAE: whether the large-k SAEs keep the features or drift to mixtures.",
    device="cpu",
))
