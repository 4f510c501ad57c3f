"""What the forgetting page computes from the store: the gain/forgetting trade-off of every run and the loss
curves of both domains. The training code is `forgetting.py`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .registry import StoredRuns


def family(label: str, config: Any) -> str:
    if config.replay_rows:
        return "LoRA r8 + replay"
    if config.rank == 0:
        return "full fine-tuning"
    if label.startswith("long"):
        return "LoRA r8, long"
    return f"LoRA r{config.rank}"


def tradeoff_table(*runs: StoredRuns) -> pd.DataFrame:
    """One row per run (of any of `runs`): new-domain gain and original-domain forgetting, in nats.

    gain = base − final source loss (> 0: learned); forgetting = final − base pydoc loss (> 0: forgot).
    """
    rows = []
    for stored in runs:
        for label, entry in stored.entries.items():
            c, s = entry.config, entry.summary
            rows.append({"experiment": stored.experiment.name, "run": label, "family": family(label, c),
                         "rank": c.rank, "lr": c.lr, "steps": c.steps, "replay_rows": c.replay_rows,
                         "batch_size": c.batch_size, "gain": -s["delta_source"], "forgetting": s["delta_pydoc"],
                         "final_source": s["final_source"], "final_pydoc": s["final_pydoc"],
                         "base_pydoc": s["base_pydoc"], "base_source": s["base_source"]})
    return pd.DataFrame(rows)


def curves(*runs: StoredRuns) -> pd.DataFrame:
    """Held-out loss change from the base, per domain, over steps, for every run (long format)."""
    frames = []
    for stored in runs:
        for label, entry in stored.entries.items():
            e = entry.table("evals")
            for domain in ("source", "pydoc"):
                frames.append(pd.DataFrame({"run": label, "step": e.step, "domain": domain,
                                            "loss": e[f"loss_{domain}"],
                                            "change": e[f"loss_{domain}"] - e[f"loss_{domain}"].iloc[0]}))
    return pd.concat(frames, ignore_index=True)


def update_norms(runs: StoredRuns) -> pd.DataFrame:
    """One row per LoRA run: its rank, LR and the total size of its update, √(Σ ‖ΔW‖²) over every adapted matrix
    (ΔW rebuilt from the stored adapters). Full fine-tuning runs are left out: they store only the attention
    matrices' ΔW, not the rest of what they changed."""
    from .lora_rank_analysis import stored_deltas

    rows = []
    for label, entry in runs.entries.items():
        if entry.config.rank == 0:
            continue
        squares = sum(float(delta.float().pow(2).sum()) for delta in stored_deltas(entry).values())
        rows.append({"run": label, "rank": entry.config.rank, "lr": entry.config.lr, "update_norm": squares ** 0.5})
    return pd.DataFrame(rows)
