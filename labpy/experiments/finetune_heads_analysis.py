"""What `experiments/finetune-heads.qmd` computes from the stored `finetune_heads` entry: mean pattern change per
model and kind of text, how much each head's query/key weights moved, and rank correlations between the two.
The training-side code is `finetune_heads.py`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import LabError
from ..store import RunEntry
from .attention_atlas_analysis import head_label  # one spelling of a head's name across pages
from .finetune_heads import BASE
from .registry import results


class StaleAdaptersError(LabError, RuntimeError):
    """The stored comparison was made with lora_rank runs that the store no longer holds (they were re-run)."""


def check_adapters_current(entry: RunEntry) -> None:
    """The entry's key covers its own config only; the adapters it merged are lora_rank entries, recorded by key.
    Raise, naming the fix, when lora_rank's runs at that scale have since changed."""
    lora = results("lora_rank", entry.config.lora_scale)
    stale = [label for label, a in entry.summary["adapters"].items() if lora[label].key != a["key"]]
    if stale:
        raise StaleAdaptersError(f"{entry.name} compared adapters {stale} of lora_rank runs the store no longer "
                                 f"holds; re-run it: lab run finetune_heads --scale {entry.scale} --force")


def tables(entry: RunEntry) -> dict[str, pd.DataFrame]:
    """The entry's tables with the fine-tuned models ordered by rank and a `name` for legends (`rank 16`), once
    the adapters it compared are checked to be the stored ones."""
    check_adapters_current(entry)
    out = {}
    for name in ("heads", "layers", "head_deltas", "losses"):
        frame = entry.table(name)
        frame["name"] = np.where(frame.model == BASE, "base", "rank " + frame["rank"].astype(str))
        out[name] = frame.sort_values(["rank"], kind="stable").reset_index(drop=True)
    deltas = out["head_deltas"]
    deltas["dqk"] = np.hypot(deltas.dq, deltas.dk)                  # ‖ΔW‖ of what sets this head's pattern
    deltas["wqk"] = np.hypot(deltas.wq, deltas.wk)
    deltas["dqk_rel"] = deltas.dqk / deltas.wqk
    deltas["dvo"] = np.hypot(deltas.dv, deltas["do"])               # ‖ΔW‖ of what this head writes
    return out


def tuned(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of the fine-tuned models only."""
    return frame[frame.model != BASE]


def mean_change(heads: pd.DataFrame) -> pd.DataFrame:
    """(model, rank, name, kind) -> mean and max pattern change over heads."""
    return (tuned(heads).groupby(["model", "rank", "name", "kind"], sort=False).pattern_tv
            .agg(mean_tv="mean", max_tv="max").reset_index())


def with_deltas(heads: pd.DataFrame, deltas: pd.DataFrame, kind: str) -> pd.DataFrame:
    """One row per (fine-tuned model, head) on `kind`: its pattern change beside its ΔW norms."""
    cols = ["model", "layer", "head", "dq", "dk", "dv", "do", "dqk", "dqk_rel", "dvo"]
    mine = tuned(heads[heads.kind == kind])
    return mine.merge(deltas[cols], on=["model", "layer", "head"], validate="one_to_one")


def spearman(x: pd.Series, y: pd.Series) -> float:
    """Spearman's rank correlation (Pearson's r of the ranks, ties averaged)."""
    return float(np.corrcoef(x.rank().to_numpy(), y.rank().to_numpy())[0, 1])


def within_layer(values: pd.Series, layers: pd.Series) -> pd.Series:
    """Each value minus its layer's mean: what is left once every layer's own level is taken out."""
    return values - values.groupby(layers).transform("mean")


def weight_pattern_correlations(heads: pd.DataFrame, deltas: pd.DataFrame, kinds=("prose", "code")) -> pd.DataFrame:
    """Per fine-tuned model and kind: Spearman ρ over heads between pattern change and ‖ΔW‖ of the head's query/
    key slices — over all heads (`rho_dqk`), within layers (both centred on their layer's mean, `rho_dqk_within`),
    relative to ‖W‖ (`rho_dqk_rel`), in layer 0 alone (`rho_dqk_layer0`: the one layer whose input fine-tuning
    does not change) — and with ‖ΔW‖ of its value/output slices, over all heads and within layers (`rho_dvo`,
    `rho_dvo_within`)."""
    rows = []
    for kind in kinds:
        for (model, rank, name), g in with_deltas(heads, deltas, kind).groupby(["model", "rank", "name"], sort=False):
            first = g[g.layer == 0]
            rows.append({"model": model, "rank": rank, "name": name, "kind": kind, "heads": len(g),
                         "rho_dqk": spearman(g.dqk, g.pattern_tv),
                         "rho_dqk_within": spearman(within_layer(g.dqk, g.layer), within_layer(g.pattern_tv, g.layer)),
                         "rho_dqk_rel": spearman(g.dqk_rel, g.pattern_tv),
                         "rho_dqk_layer0": spearman(first.dqk, first.pattern_tv), "layer0_heads": len(first),
                         "rho_dvo": spearman(g.dvo, g.pattern_tv),
                         "rho_dvo_within": spearman(within_layer(g.dvo, g.layer), within_layer(g.pattern_tv, g.layer))})
    return pd.DataFrame(rows)


def layer_means(heads: pd.DataFrame, deltas: pd.DataFrame, kind: str = "code") -> pd.DataFrame:
    """Per fine-tuned model and layer: mean ‖ΔW‖ of the heads' query/key and value/output slices, mean pattern
    change on `kind`."""
    return (with_deltas(heads, deltas, kind).groupby(["rank", "name", "layer"], sort=False)
            [["dqk", "dvo", "pattern_tv"]].mean().reset_index())


def score_means(heads: pd.DataFrame) -> pd.DataFrame:
    """Mean head score per model and kind (induction on repeated tokens only)."""
    means = heads.groupby(["rank", "name", "kind"], sort=False)[
        ["previous_token", "first_token", "entropy_bits", "induction", "pattern_tv"]].mean().reset_index()
    return means.sort_values(["kind", "rank"], kind="stable").reset_index(drop=True)
