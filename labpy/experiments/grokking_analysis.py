"""The grokking page's reading of a run: the milestones of training and the early warning, by fixed rules.

The rules were written before any `cpu` run existed, and a warning may use only what a run knows at that epoch
(its own earlier evaluations, never a later checkpoint or a test label): that is open problem 5.4's "without
future information".
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from ..toy.modular_addition import (ModularAdditionTransformer, all_pairs, excluded_logits, fast_logits,
                                    neuron_frequency_fve, restricted_logits, sum_directions)

MEMORISED_ACC = 0.99      # train accuracy: memorisation is complete
ONSET_ACC = 0.5           # test accuracy: grokking is under way
GROKKED_ACC = 0.99        # test accuracy: grokking is complete
WARN_SHARE_FACTOR = 2.0   # warn when the embedding's top-frequency share reaches twice its value at epoch 0
WARN_RESTRICTED = 0.5     # ... or when the own-restricted training loss falls below half the chance loss


def first_step(frame: pd.DataFrame, condition: pd.Series) -> float:
    """The first step where `condition` holds (NaN if never)."""
    hits = frame.step[condition]
    return float(hits.iloc[0]) if len(hits) else math.nan


def milestones(evals: pd.DataFrame, chance_loss: float) -> dict[str, float]:
    """Epochs of memorisation, the two warnings, grokking's onset and completion, and the warnings' lead times."""
    evals = evals.sort_values("step")
    start_share = float(evals.embed_top_share.iloc[0])
    found = {
        "memorised": first_step(evals, evals.train_acc >= MEMORISED_ACC),
        "warn_share": first_step(evals, evals.embed_top_share >= WARN_SHARE_FACTOR * start_share),
        "warn_restricted": first_step(evals, evals.own_restricted_train_loss < WARN_RESTRICTED * chance_loss),
        "onset": first_step(evals, evals.test_acc >= ONSET_ACC),
        "grokked": first_step(evals, evals.test_acc >= GROKKED_ACC),
    }
    found["lead_share"] = found["onset"] - found["warn_share"]
    found["lead_restricted"] = found["onset"] - found["warn_restricted"]
    return found


def value_at(frame: pd.DataFrame, step: float, column: str) -> float:
    """`column` at the last row at or before `step` (checkpoints and evaluations are on different grids)."""
    before = frame[frame.step <= step]
    return float(before[column].iloc[-1]) if len(before) else math.nan


PHASES = ("memorisation", "circuit formation", "cleanup")


def phases(marks: dict[str, float]) -> pd.DataFrame:
    """Nanda et al.'s three phases laid on a run's `milestones`: memorisation from epoch 0 until the train accuracy
    reaches MEMORISED_ACC, circuit formation until the test accuracy's onset (ONSET_ACC), cleanup until grokking
    completes (GROKKED_ACC). The paper draws its boundaries from the progress measures; these use accuracy alone,
    by the rules above, so that no boundary is placed by eye."""
    return pd.DataFrame({"phase": list(PHASES),
                         "start": [0.0, marks["memorised"], marks["onset"]],
                         "end": [marks["memorised"], marks["onset"], marks["grokked"]]})


def final_model(entry: Any) -> ModularAdditionTransformer:
    """A stored grokking run's model with its final weights, in eval mode."""
    model = ModularAdditionTransformer(entry.config.spec())
    model.load_state_dict(entry.checkpoint("final"))
    return model.eval()


@torch.no_grad()
def fourier_ablation(entry: Any) -> pd.DataFrame:
    """The final model on every pair `a b =`: loss (nats) and accuracy of its logits as they are, of their key
    frequencies alone (`restricted_logits`, the run's summary key frequencies) and of everything but them
    (`excluded_logits`). One row per variant: `logits`, `key frequencies only`, `key frequencies removed`."""
    p = entry.config.p
    tokens, labels = all_pairs(p)                                                      # (p², 3), (p²,)
    logits = fast_logits(final_model(entry), tokens)                                   # (p², p)
    directions, key = sum_directions(p), entry.summary["key_freqs"]
    variants = {"logits": logits, "key frequencies only": restricted_logits(logits, directions, key),
                "key frequencies removed": excluded_logits(logits, directions, key)}
    return pd.DataFrame([{"variant": name, "loss": F.cross_entropy(v, labels).item(),
                          "accuracy": (v.argmax(-1) == labels).float().mean().item()}
                         for name, v in variants.items()])


@torch.no_grad()
def neuron_frequencies(entry: Any) -> pd.DataFrame:
    """One row per MLP neuron of a stored run's final model, read on every pair `a b =`: whether it fires on any
    pair, the frequency whose terms explain most of its variance (`neuron_frequency_fve`), that fraction (`fve`)
    and the fraction all of the run's key frequencies explain together (`key_fve`)."""
    p = entry.config.p
    tokens, _ = all_pairs(p)                                                           # (p², 3)
    _, cache = final_model(entry).run_with_cache(tokens, names_filter="blocks.0.mlp.hook_post")
    acts = cache["blocks.0.mlp.hook_post"][:, -1]                                      # (p², d_mlp) at "="
    fve = neuron_frequency_fve(acts, p)                                                # (K, d_mlp)
    best = fve.max(dim=0)
    key_fve = fve[[k - 1 for k in entry.summary["key_freqs"]]].sum(dim=0)
    return pd.DataFrame({"neuron": range(acts.shape[1]), "fires": (acts > 0).any(dim=0).numpy(),
                         "frequency": (best.indices + 1).numpy(), "fve": best.values.numpy(),
                         "key_fve": key_fve.numpy()})


def forecast_onsets(warning: pd.Series, onset: pd.Series, by: str = "ratio") -> pd.Series:
    """A leave-one-out forecast of each seed's onset from its own warning epoch: the warning times the median
    onset / warning ratio of the *other* seeds (`by="ratio"`), or plus their median onset - warning gap
    (`by="gap"`). The seed contributes only what it knows at its warning; the other seeds are finished runs, as
    they would be for someone training one more."""
    if by not in ("ratio", "gap"):
        raise ValueError(f"by={by!r}: a forecast scales the warning by the other seeds' ratio ('ratio') or adds "
                         f"their gap ('gap')")
    if len(warning) < 2:
        raise ValueError(f"a leave-one-out forecast needs at least 2 seeds, got {len(warning)}")
    warning, onset = warning.reset_index(drop=True), onset.reset_index(drop=True)
    link = (onset / warning) if by == "ratio" else (onset - warning)
    others = pd.Series([link.drop(index=i).median() for i in range(len(warning))])
    return warning * others if by == "ratio" else warning + others


def initial_frequency_norms(config: Any) -> pd.DataFrame:
    """Per frequency (1..K), the untrained model's embedding and logit Fourier norms: the model rebuilt from
    `config.seed` exactly as `train_grokking` builds it, so these are the norms training starts from."""
    from ..toy.modular_addition import embedding_frequency_norms, logit_frequency_norms

    model = ModularAdditionTransformer(config.spec(), seed=config.seed)
    tokens, _ = all_pairs(config.p)                                                    # (p², 3)
    with torch.no_grad():
        embed = embedding_frequency_norms(model.W_E, config.p)                         # (K,)
        logit = logit_frequency_norms(fast_logits(model, tokens), sum_directions(config.p))   # (K,)
    return pd.DataFrame({"freq": range(1, len(embed) + 1), "embed_norm": embed.numpy(), "logit_norm": logit.numpy()})


def mean_rank(norms: dict[str, pd.Series], chosen: dict[str, list[int]]) -> float:
    """Mean rank (1 = the largest norm) of each run's `chosen` frequencies among its own `norms` (a Series indexed
    by frequency), pooled over runs."""
    ranks = [norms[run].rank(ascending=False, method="average").loc[freqs] for run, freqs in chosen.items()]
    return float(pd.concat(ranks).mean())


def chance_band(sizes: list[int], n_freqs: int, draws: int = 10_000, seed: int = 0,
                middle: float = 0.9) -> tuple[float, float]:
    """The middle `middle` of the pooled mean rank when each seed's set of `sizes[i]` frequencies is drawn at random
    from `n_freqs` (ranks are then a uniform draw without replacement)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = np.array([np.concatenate([rng.choice(n_freqs, size, replace=False) + 1 for size in sizes]).mean()
                      for _ in range(draws)])
    tail = (1 - middle) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
