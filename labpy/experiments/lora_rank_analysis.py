"""What the LoRA pages compute from the store: spectra and effective ranks of every stored ΔW (cheap: SVDs of
small matrices), quality per run, subspace overlaps, and the method tables of the fine-tuning pages.

`experiments/lora-rank.qmd`, `papers/lora.qmd` and the other fine-tuning pages read these; the training code is
`lora_rank.py`.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..finetune import lora_delta, unflatten_factors
from ..store import RunEntry
from .lora_rank import effective_rank, energy_rank, singular_values
from .registry import StoredRuns


def module_kind(name: str) -> tuple[int, str]:
    """(layer, projection) of a module name like `model.layers.3.self_attn.q_proj`."""
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]), parts[-1]


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
