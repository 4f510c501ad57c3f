"""LoRA rank: what each rank buys when fine-tuning the lab LM on stdlib source code, against full fine-tuning.

Run: one config per rank (1 … 64) and full fine-tuning, same data, steps, batches and schedule. Each run
tracks held-out loss on the new domain (source) and the original one (pydoc). Stored: the curves and, for the
spectra, only the small tensors needed — each adapted layer's A and B (fp16) for LoRA, and ΔW = W_after −
W_before of the same layers (fp16) for full fine-tuning. Singular values and effective ranks of
ΔW = B·A·(α/r) are computed by the page from those tensors.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from ..finetune import (FinetuneConfig, flatten_factors, lora_delta, lora_factors, loss_summary, run_finetune,
                        target_weights, unflatten_factors)
from ..store import RunEntry, RunResult
from .registry import Experiment, RunContext, StoredRuns, register

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


def module_kind(name: str) -> tuple[int, str]:
    """(layer, projection) of a module name like `model.layers.3.self_attn.q_proj`."""
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]), parts[-1]


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


# ---- analysis used by the page (cheap: SVDs of stored small matrices) ----

def stored_deltas(entry: RunEntry) -> dict[str, torch.Tensor]:
    """ΔW of every adapted layer of a run, rebuilt from its stored tensors (fp16 → fp32)."""
    if entry.config.rank:
        return {name: lora_delta(f) for name, f in unflatten_factors(entry.checkpoint("adapter")).items()}
    return entry.checkpoint("delta")


def spectra(runs: StoredRuns) -> pd.DataFrame:
    """One row per (run, module, singular value index): the singular values of every stored ΔW."""
    rows = []
    for label, entry in runs.entries.items():
        for name, delta in stored_deltas(entry).items():
            layer, proj = module_kind(name)
            s = singular_values(delta)
            rows += [{"run": label, "rank": entry.config.rank, "module": name, "layer": layer, "proj": proj,
                      "index": i + 1, "sv": float(v), "sv_rel": float(v / s[0])} for i, v in enumerate(s)]
    return pd.DataFrame(rows)


def rank_table(spec: pd.DataFrame) -> pd.DataFrame:
    """Per run and module: effective rank, 90%-energy rank and Frobenius norm of ΔW, from its singular values."""
    rows = []
    for (label, module), group in spec.groupby(["run", "module"], sort=False):
        s = torch.tensor(group.sort_values("index").sv.to_numpy())
        layer, proj = module_kind(module)
        rows.append({"run": label, "rank": int(group["rank"].iloc[0]), "module": module, "layer": layer,
                     "proj": proj, "dims": len(s), "effective_rank": effective_rank(s),
                     "energy_rank_90": energy_rank(s), "frobenius": float(s.norm())})
    return pd.DataFrame(rows)


def quality_table(runs: StoredRuns) -> pd.DataFrame:
    """Per run: trainable parameters, final held-out losses on both domains and their change from the base."""
    rows = []
    for label, entry in runs.entries.items():
        s = entry.summary
        rows.append({"run": label, "rank": entry.config.rank, "lr": entry.config.lr,
                     "trainable_params": s["trainable_params"], "final_source": s["final_source"],
                     "delta_source": s["delta_source"], "final_pydoc": s["final_pydoc"],
                     "delta_pydoc": s["delta_pydoc"], "wall_time_s": entry.provenance["wall_time_s"]})
    return pd.DataFrame(rows)


def curves(runs: StoredRuns) -> pd.DataFrame:
    """Held-out losses of every run over steps, long format (run, step, domain, loss)."""
    frames = []
    for label, entry in runs.entries.items():
        evals = entry.table("evals")
        long = evals.melt(id_vars="step", value_vars=["loss_source", "loss_pydoc"], var_name="domain",
                          value_name="loss")
        frames.append(long.assign(run=label, domain=long.domain.str.removeprefix("loss_")))
    return pd.concat(frames, ignore_index=True)


def config_frames(runs: StoredRuns) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fields shared by every config, one row per run of the fields that vary): the method tables of a page."""
    configs = pd.DataFrame({label: {k: ", ".join(map(str, v)) if isinstance(v, list) else v
                                    for k, v in e.config_dict.items()} for label, e in runs.entries.items()})
    same = configs.astype(str).nunique(axis=1) == 1
    fixed = configs[same].iloc[:, 0].astype(str).rename("value").rename_axis("field").reset_index()
    varying = configs[~same].T.reset_index(names="run")
    return fixed, varying


def top_directions(delta: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k left singular vectors (d_out, k) of an update: the output directions it writes most to."""
    return torch.linalg.svd(delta.double(), full_matrices=False).U[:, :k]


def subspace_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """How much the top-k output directions of two updates coincide: ‖U_aᵀ U_b‖²_F / k over their top-k left
    singular vectors (Hu et al. 2021, fig. 3, in this form). 1: the same subspace; 0: orthogonal; k/d for
    random subspaces of a d-dimensional space."""
    return _overlap(top_directions(a, k), top_directions(b, k))


def _overlap(ua: torch.Tensor, ub: torch.Tensor) -> float:
    return float((ua.T @ ub).pow(2).sum() / ua.shape[1])


def overlap_table(runs: StoredRuns, reference: str, others: list[str], ks=(1, 2, 4, 8)) -> pd.DataFrame:
    """Subspace overlap of each run's ΔW with `reference`'s, per module and k, plus the random baseline k/d."""
    top = max(ks)
    ref = {name: top_directions(d, top) for name, d in stored_deltas(runs[reference]).items()}
    rows = []
    for label in others:
        for name, delta in stored_deltas(runs[label]).items():
            layer, proj = module_kind(name)
            u = top_directions(delta, top)
            rows += [{"run": label, "module": name, "layer": layer, "proj": proj, "k": k,
                      "overlap": _overlap(ref[name][:, :k], u[:, :k]), "random": k / delta.shape[0]} for k in ks]
    return pd.DataFrame(rows)
