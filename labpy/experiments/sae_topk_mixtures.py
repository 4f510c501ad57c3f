"""Why a top-k SAE that keeps more latents than features are active finds none of them.

`sae_topk` trained top-k SAEs (80 latents) on the S = 0.9 toy model, where about four of the 40 features are active
per input. k = 2, 3 and 4 found every feature at cosine above 0.99; k = 6 and 8 explained more of the variance but
found none, with two thirds of their latents dead. Two explanations compete:

- **Capacity.** Ten dimensions let six or eight directions rebuild any input, so the latents need not be features:
  they learn dense mixtures. Then the SAE should rebuild inputs that are not the toy's at all (isotropic Gaussian
  vectors), each latent should mix many features, and a single feature should be spread over many latents.
- **Dead latents.** With k large, a few latents win every input early on, the rest never fire and get no gradient,
  and 25 live latents cannot be 40 features. Then reviving them should restore the features. The AuxK loss of Gao et
  al. (2024) does that: a latent that has not fired for a while is asked to reconstruct the residual error.

This experiment retrains `sae_topk`'s SAEs (the same toy, seeds and recipe, so the same SAEs) and a second set with
the AuxK loss, and measures both explanations on each. For scale it also scores an oracle: the true features, with
each input's k largest feature values kept — what a top-k code that had found the features would reconstruct.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from ..device import one_thread
from ..store import RunResult
from ..toy.sae import SparseAutoencoder, evaluate_sae
from ..validation import check_ranges, number_above
from .registry import Experiment, RunContext, register
from .sae_topk import (SMOKE_SIZES, SaeTopKConfig, TopKAutoencoder, activation_sampler, eval_features, fresh_topk,
                       top_k_of, train_topk)

MATCH = 0.9          # a latent "is" a feature when its decoder direction lies within this cosine of one


@dataclass(frozen=True)
class TopKMixturesConfig(SaeTopKConfig):
    """`sae_topk`'s config (the same toy, SAEs and seeds) and the AuxK set's settings."""

    dead_after: int = 100                     # AuxK: a latent is dead after this many steps without firing
    aux_coefficient: float = 1 / 32           # AuxK: weight of the normalised auxiliary loss (Gao et al.)
    random_inputs: int = 5000                 # isotropic Gaussian inputs for the "rebuilds anything" test

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive_int=("dead_after", "random_inputs"),
                     rules={"aux_coefficient": number_above(0)})

    @property
    def k_aux(self) -> int:
        """Dead latents asked to rebuild the residual per input: half the input's width (Gao et al.)."""
        return max(1, self.n_hidden // 2)


def train_topk_auxk(sae: TopKAutoencoder, sample, steps: int, lr: float, k_aux: int, dead_after: int,
                    coefficient: float) -> pd.DataFrame:
    """Adam on the reconstruction loss plus AuxK: the `k_aux` most active dead latents reconstruct the (detached)
    residual, normalised by its size. Returns the curve (step, instance, mse, aux, dead) at 20 points."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    last_fired = torch.zeros(sae.W_dec.shape[:2], dtype=torch.long)                             # (I, L)
    rows, log_every = [], max(1, steps // 20)
    for step in range(steps):
        h = sample(step)                                                                         # (B, m)
        pre = SparseAutoencoder.encode(sae, h)                                                   # (I, B, L) ReLU'd
        f = top_k_of(pre, sae.ks)
        reconstruction = sae.decode(f)                                                           # (I, B, m)
        mse = ((reconstruction - h) ** 2).sum(-1).mean(1)                                        # (I,)
        last_fired[(f > 0).any(1)] = step
        dead = (step - last_fired) >= dead_after                                                 # (I, L)
        residual = (h - reconstruction).detach()                                                 # (I, B, m)
        aux_code = top_k_of(pre * dead[:, None], min(k_aux, pre.shape[-1]))
        aux = (((torch.bmm(aux_code, sae.W_dec) - residual) ** 2).sum(-1).mean(1)
               / (residual ** 2).sum(-1).mean(1).clamp_min(1e-12))                               # (I,)
        aux = torch.where(dead.any(-1), aux, torch.zeros_like(aux))
        optimizer.zero_grad(set_to_none=True)
        (mse + coefficient * aux).sum().backward()
        optimizer.step()
        sae.normalise_decoder()
        if step % log_every == 0 or step == steps - 1:
            rows += [{"step": step, "instance": i, "mse": e, "aux": a, "dead": int(d)}
                     for i, (e, a, d) in enumerate(zip(mse.tolist(), aux.tolist(), dead.sum(-1).tolist()))]
    return pd.DataFrame(rows)


def participation_ratio(cosines: torch.Tensor) -> torch.Tensor:
    """(L, n) cosines of each latent with the n features -> (L,): how many features a latent mixes, (Σc²)² / Σc⁴
    (1 for a latent aligned with one feature and orthogonal to the rest, n for an even mixture)."""
    c2 = cosines ** 2
    return c2.sum(-1) ** 2 / (c2 ** 2).sum(-1)


@torch.no_grad()
def mixture_scores(sae: TopKAutoencoder, truth: torch.Tensor, h_eval: torch.Tensor, h_random: torch.Tensor
                   ) -> pd.DataFrame:
    """One row per instance: how the live latents relate to the features, how many dead latents could still get a
    gradient from AuxK (a positive pre-activation on some input: AuxK keeps the dead latents' ReLU'd values, so one
    that is negative everywhere stays out of reach), how a lone feature is coded, and how much of the variance of
    isotropic Gaussian inputs (not the toy's) the SAE rebuilds.

    truth (n_rep, m); h_eval (N, m) the toy's activations (which latents are alive); h_random (N', m)."""
    alive = (sae.encode(h_eval) > 0).any(1)                                                      # (I, L)
    reachable = (SparseAutoencoder.encode(sae, h_eval) > 0).any(1)         # (I, L): ReLU'd pre-activation ever > 0
    lone, _ = sae(truth)                                                                         # (I, n_rep, m)
    lone_code = sae.encode(truth)                                                                # (I, n_rep, L)
    random_rebuilt, _ = sae(h_random)
    random_variance = ((h_random - h_random.mean(0)) ** 2).sum(-1).mean()
    rows = []
    for i in range(sae.W_dec.shape[0]):
        live = sae.W_dec[i][alive[i]]                                                            # (L_live, m)
        cosines = F.normalize(live, dim=-1) @ F.normalize(truth, dim=-1).T                       # (L_live, n_rep)
        best = cosines.abs().max(-1).values
        code = lone_code[i]
        rows.append({
            "instance": i, "live": int(alive[i].sum()),
            "dead_reachable": int((reachable[i] & ~alive[i]).sum()),    # dead, yet within reach of AuxK's gradient
            "feature_latents": float((best > MATCH).float().mean()),
            "mixed_features": float(participation_ratio(cosines).mean()),
            "lone_top_share": float((code.max(-1).values / code.sum(-1).clamp_min(1e-12)).mean()),
            "lone_active": float((code > 0).sum(-1).float().mean()),
            "lone_cosine": float(F.cosine_similarity(lone[i], truth, dim=-1).mean()),
            "random_fve": float(1 - ((random_rebuilt[i] - h_random) ** 2).sum(-1).mean() / random_variance)})
    return pd.DataFrame(rows)


def gaussian_inputs(config: TopKMixturesConfig | SaeTopKConfig, h_eval: torch.Tensor, n: int) -> torch.Tensor:
    """(n, m) isotropic Gaussian inputs at the toy activations' per-dimension RMS, seeded from `config.seed`: inputs
    that are not the toy's, for the "rebuilds anything" test."""
    scale = (h_eval ** 2).sum(-1).mean().div(h_eval.shape[1]).sqrt()
    return torch.randn(n, h_eval.shape[1], generator=torch.Generator().manual_seed(1000 * config.seed + 13)) * scale


def all_scores(sae: TopKAutoencoder, truth: torch.Tensor, h_eval: torch.Tensor, h_random: torch.Tensor) -> pd.DataFrame:
    """`evaluate_sae`'s row per instance joined with `mixture_scores`'."""
    return evaluate_sae(sae, h_eval, truth).merge(mixture_scores(sae, truth, h_eval, h_random), on="instance")


def oracle_fve(x: torch.Tensor, W: torch.Tensor, k: int) -> float:
    """Variance explained when each input keeps only its k largest true feature values: x (N, n), W (m, n)."""
    h = x @ W.T
    kept = top_k_of(x[None], k)[0]
    return float(1 - ((kept @ W.T - h) ** 2).sum(-1).mean() / ((h - h.mean(0)) ** 2).sum(-1).mean())


def run(config: TopKMixturesConfig, ctx: RunContext) -> RunResult:
    plain = train_topk(config)                # sae_topk's SAEs: the same seeds give the same weights
    W, truth, probability = plain.W, plain.truth, plain.probability
    with one_thread():
        auxk = fresh_topk(config, W.shape[0])
        curve = train_topk_auxk(auxk, activation_sampler(config, W, probability), config.sae_steps, config.lr,
                                config.k_aux, config.dead_after, config.aux_coefficient)
        x_eval = eval_features(config, probability)
        h_eval = x_eval @ W.T                                                                    # (N, m)
        h_random = gaussian_inputs(config, h_eval, config.random_inputs)
        tables = [all_scores(sae, truth, h_eval, h_random).assign(variant=variant, k=list(config.ks))
                  for variant, sae in (("top-k", plain.sae), ("top-k + AuxK", auxk))]
        oracle = pd.DataFrame({"k": list(config.ks), "oracle_fve": [oracle_fve(x_eval, W, k) for k in config.ks]})
    curve["k"] = curve.instance.map(dict(enumerate(config.ks)))
    return RunResult(tables={"scores": pd.concat(tables, ignore_index=True).merge(oracle, on="k"),
                             "auxk_curve": curve},
                     summary={"n_represented": int(plain.features.represented.sum()), "k_aux": config.k_aux,
                              "true_l0": float((x_eval > 0).sum(-1).float().mean())},
                     seed=config.seed)


register(Experiment(
    name="sae_topk_mixtures",
    title="Why a top-k SAE with too large a k finds no features",
    track="Toy models",
    page="experiments/superposition.qmd",
    version=1,
    config_type=TopKMixturesConfig,
    scales={"smoke": {"dense": TopKMixturesConfig(**SMOKE_SIZES, dead_after=5, random_inputs=200)},
            "cpu": {"dense": TopKMixturesConfig()}},
    run=run,
    description="sae_topk's top-k SAEs retrained, and again with the AuxK loss that revives dead latents: how many "
                "live latents are features, how a lone feature is coded, how well random inputs are rebuilt, and an "
                "oracle that keeps each input's k largest true features.",
    device="cpu",
))
