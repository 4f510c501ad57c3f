"""What weight decay does to the weights at a high learning rate: their size, and how much of them each step keeps.

`high_rate_decay` found a band: at lr 0.1, weight decays from 0.3 to 2 keep nearly every seed learning, 0.1 and 3
none. The guess behind the band has two edges. Below it, the decay is too weak to stop the weights growing
(`high_rate_damage` found the frozen model's weights six to fourteen times their initial size). Above it, the decay
erases what each step writes: AdamW multiplies every weight by 1 − lr·decay per step, so at lr 0.1 and decay 3 a
write keeps 0.7 of itself per step, under 1% after 13 steps.

This experiment reruns the sweep's lr 0.1 runs (same model, corpus, seeds, schedule) at decays 0.1, 0.3, 1 and 3,
and the sweep's lr 1e-2 run (decay 0.1, a healthy rate) as a yardstick, and measures every `measure_every` steps,
over the weight matrices (all 2-D weights but the tied embedding) and over the embedding:

- **size**: each tensor's RMS over its RMS at initialisation;
- **memory**: the cosine between each tensor now and `lag_steps` steps earlier (1: nothing erased or rewritten);
- **write and shrink**: the RMS of Adam's step alone, lr·m̂ / (√v̂ + ε), and of the decay's pull, lr·decay·RMS(W).
  Where the two balance, the weights have reached the size the decay allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..device import lab_device
from ..models.lab_lm import build_lab_lm, lm_loss, mean_loss
from ..store import RunResult
from ..tasks.corpus import lm_batch_fn
from ..train import StatsContext, adam_eps, adam_moments, train
from ..validation import check_ranges, require
from .lr_sweep import SMOKE, SweepConfig
from .registry import Experiment, RunContext, register

EMBEDDING = "model.embed_tokens.weight"
DECAYS = (0.1, 0.3, 1.0, 3.0)
HIGH_LR, YARDSTICK_LR = 0.1, 1e-2


@dataclass(frozen=True)
class WeightWatchConfig(SweepConfig):
    measure_every: int = 10
    lag_steps: int = 20              # the memory's look-back, a multiple of measure_every

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive_int=("measure_every", "lag_steps"))
        require(self, self.lag_steps % self.measure_every == 0, "lag_steps",
                f"must be a multiple of measure_every = {self.measure_every} (snapshots are kept at measured steps)")


def group_of(name: str) -> str | None:
    """'embedding', 'matrices' (every other 2-D weight) or None (norm gains)."""
    return "embedding" if name == EMBEDDING else None if not name.endswith("proj.weight") else "matrices"


def watcher(initial_rms: dict[str, float], lag: int, weight_decay: float):
    """A `stats_fn` for `labpy.train`: per group, the mean over its tensors of size, memory, write and shrink."""
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def stats(ctx: StatsContext) -> list[dict]:
        eps, per_group = adam_eps(ctx.optimizer), {}
        now = {}
        for p in ctx.model.parameters():
            name = ctx.names[id(p)]
            group = group_of(name)
            moments = adam_moments(ctx.optimizer, p)
            if group is None or moments is None:
                continue
            w = p.detach().clone()
            now[name] = w
            m_hat, v_hat = moments
            rms = float(w.pow(2).mean().sqrt())
            past = snapshots.get(ctx.step - lag, {}).get(name)
            row = {"size": rms / initial_rms[name],
                   "memory": float(torch.nn.functional.cosine_similarity(w.flatten(), past.flatten(), dim=0))
                   if past is not None else float("nan"),
                   "write": ctx.lr * float((m_hat / (v_hat.sqrt() + eps)).pow(2).mean().sqrt()),
                   "shrink": ctx.lr * weight_decay * rms}
            per_group.setdefault(group, []).append(row)
        snapshots[ctx.step] = now
        return [{"group": g, "step": ctx.step, "lr": ctx.lr, **pd.DataFrame(rows).mean().to_dict()}
                for g, rows in per_group.items()]
    return stats


def run(config: WeightWatchConfig, ctx: RunContext) -> RunResult:
    device = lab_device()
    train_ids, val = config.data(device)                                               # val (N, T+1)
    hf_config = config.hf_config()
    watched, finals = [], []
    for seed in config.seeds:
        model = build_lab_lm(hf_config, seed)
        initial_rms = {n: float(p.detach().pow(2).mean().sqrt()) for n, p in model.named_parameters()}
        log = train(model, lm_batch_fn(train_ids, config.batch_size, config.seq_len, seed), lm_loss,
                    config.train_spec(seed, eval_every=config.measure_every),
                    eval_fn=lambda m: {"val_loss": mean_loss(m, val)},
                    stats_fn=watcher(initial_rms, config.lag_steps, config.weight_decay),
                    progress=ctx.progress, desc=f"high_rate_weights {ctx.label} seed {seed}", device=device)
        stats = log.custom_stats.merge(log.evals[["step", "val_loss"]], on="step", how="left")
        watched.append(stats.assign(seed=seed))
        finals.append({"seed": seed, "final_val_loss": float(log.evals.val_loss.iloc[-1])})
    summary = {"lr": config.lr, "weight_decay": config.weight_decay, "tokens_seen": config.steps * config.batch_size
               * config.seq_len}
    return RunResult(tables={"weights": pd.concat(watched, ignore_index=True), "seeds": pd.DataFrame(finals)},
                     summary=summary, seed=config.seeds[0])


def _scale(**common) -> dict[str, WeightWatchConfig]:
    configs = {f"wd-{wd:g}": WeightWatchConfig(lr=HIGH_LR, weight_decay=wd, **common) for wd in DECAYS}
    return configs | {"yardstick": WeightWatchConfig(lr=YARDSTICK_LR, weight_decay=0.1, **common)}


register(Experiment(
    name="high_rate_weights",
    title="What weight decay does to the weights at a high learning rate",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=WeightWatchConfig,
    scales={"smoke": {k: v for k, v in _scale(**SMOKE, measure_every=2, lag_steps=4).items()
                      if k in ("wd-0.1", "wd-3")},
            "cpu": _scale()},
    run=run,
    description="The sweep's lr 0.1 runs at decays 0.1 to 3 (and lr 1e-2 as a yardstick), watching the weights' "
                "size against initialisation, their memory over 20 steps, and Adam's write against the decay's pull.",
))
