"""LoRA rank: what each rank buys when fine-tuning the lab LM on stdlib source code, against full fine-tuning.

Run: one config per rank (1 … 64) and full fine-tuning, same data, steps, batches and schedule. Each run
tracks held-out loss on the new domain (source) and the original one (pydoc). Stored: the curves and, for the
spectra, only the small tensors needed — each adapted layer's A and B (fp16) for LoRA, and ΔW = W_after −
W_before of the same layers (fp16) for full fine-tuning. Singular values and effective ranks of
ΔW = B·A·(α/r) are computed by the page from those tensors (`lora_rank_analysis.py`).
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from ..finetune import (FinetuneConfig, flatten_factors, lora_delta, lora_factors, loss_summary, run_finetune,
                        target_weights)
from ..store import RunResult
from .registry import Experiment, RunContext, register

RANKS = (1, 2, 4, 8, 16, 32, 64)
LORA_LRS = (1e-3, 5e-3)     # two LRs: with alpha = r, rank and step size are entangled
FULL_LRS = (1e-4, 1e-3)


# ---- spectra ----

def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values (descending) of a matrix, in float64 so the tail is not rounding noise of the SVD."""
    return torch.linalg.svdvals(matrix.double())


def effective_rank(s: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank exp(H(p)), p_i = s_i / Σ s: 1 for rank one, k for k equal values."""
    p = s[s > 0] / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def energy_rank(s: torch.Tensor, fraction: float = 0.9) -> int:
    """How many singular values hold `fraction` of the energy Σ s_i² (the Frobenius norm squared)."""
    energy = (s.double() ** 2).cumsum(0) / (s.double() ** 2).sum()
    return int(torch.searchsorted(energy, torch.tensor([fraction], dtype=torch.float64)).item()) + 1


# ---- run ----

def run(config: FinetuneConfig, ctx: RunContext) -> RunResult:
    outcome = run_finetune(config, ctx.work_dir, ctx.progress, desc=f"lora_rank {ctx.label}")
    if config.rank:
        factors = lora_factors(outcome.model)
        deltas = {name: lora_delta(f) for name, f in factors.items()}
        checkpoints = {"adapter": flatten_factors(factors)}
    else:
        after = target_weights(outcome.model, config.targets)
        deltas = {name: after[name] - outcome.base_weights[name] for name in after}
        checkpoints = {"delta": deltas}
    ranks = pd.DataFrame([{"module": name, "effective_rank": effective_rank(s), "energy_rank_90": energy_rank(s),
                           "frobenius": float(s.norm())}
                          for name, s in ((n, singular_values(d)) for n, d in deltas.items())])
    summary = {**loss_summary(outcome.log), **outcome.info}
    return RunResult(tables={"steps": outcome.log.steps, "evals": outcome.log.evals, "ranks_fp32": ranks},
                     summary=summary, checkpoints=checkpoints, seed=config.seed)


CPU_BASE = FinetuneConfig(base="lab-lm:cpu", lr=1e-3, steps=300, batch_size=8, seq_len=64, warmup_steps=20,
                          eval_every=25, eval_windows=64)
SMOKE_BASE = FinetuneConfig(base="lab-lm:smoke", lr=3e-3, steps=16, batch_size=4, seq_len=32, warmup_steps=2,
                            eval_every=8, eval_windows=8, source_chars=60_000)


def rank_configs(base: FinetuneConfig, ranks=RANKS, lora_lrs=LORA_LRS, full_lrs=FULL_LRS) -> dict[str, FinetuneConfig]:
    configs = {f"r{r}_lr{lr:g}": dataclasses.replace(base, rank=r, lr=lr) for lr in lora_lrs for r in ranks}
    configs |= {f"full_lr{lr:g}": dataclasses.replace(base, rank=0, lr=lr) for lr in full_lrs}
    return configs


register(Experiment(
    name="lora_rank",
    title="LoRA rank vs full fine-tuning of the lab LM on stdlib source code",
    track="Fine-tuning",
    page="experiments/lora-rank.qmd",
    version=1,
    config_type=FinetuneConfig,
    scales={"smoke": rank_configs(SMOKE_BASE, ranks=(1, 4), lora_lrs=(3e-3,), full_lrs=(1e-3,)), "cpu": rank_configs(CPU_BASE)},
    run=run,
    description="Ranks 1-64 and full fine-tuning on the same data: quality, parameters, spectra of ΔW.",
))
