"""Catastrophic forgetting: how much original-domain (pydoc) loss fine-tuning on source code costs, and what helps.

Run: the same fine-tuning as `lora_rank` (same data, batches, steps, schedule), varied along the axes that
forgetting may depend on — learning rate (LoRA rank 8 and full fine-tuning), steps (one long run) and replay
(a share of every batch drawn from the base model's own pydoc training text). Rank is the `lora_rank`
experiment's axis; the page reads both. Stored: curves and summaries only (no weights).
"""

from __future__ import annotations

import dataclasses
from ..finetune import FinetuneConfig, loss_summary, run_finetune
from ..store import RunResult
from .lora_rank import CPU_BASE, SMOKE_BASE
from .registry import Experiment, RunContext, register

LORA_LRS = (1e-5, 2e-4, 2e-2)      # with lora_rank's r8 at 1e-3 and 5e-3: the old plan's 1e-5, 2e-4, 1e-3, 5e-3
FULL_LRS = (1e-5, 5e-3)            # with lora_rank's full fine-tuning at 1e-4 and 1e-3
REPLAY_ROWS = (2, 4)               # of a batch of 8: 25% and 50% replay


def run(config: FinetuneConfig, ctx: RunContext) -> RunResult:
    outcome = run_finetune(config, ctx.work_dir, ctx.progress, desc=f"forgetting {ctx.label}")
    summary = {**loss_summary(outcome.log), **outcome.info}
    return RunResult(tables={"steps": outcome.log.steps, "evals": outcome.log.evals}, summary=summary,
                     seed=config.seed)


def forgetting_configs(base: FinetuneConfig, lora_lrs=LORA_LRS, full_lrs=FULL_LRS, replay_rows=REPLAY_ROWS,
                       replay_lr: float = 5e-3, long_steps: int = 600) -> dict[str, FinetuneConfig]:
    rep = dataclasses.replace
    configs = {f"lora_lr{lr:g}": rep(base, lr=lr) for lr in lora_lrs}
    configs |= {f"full_lr{lr:g}": rep(base, rank=0, lr=lr) for lr in full_lrs}
    configs |= {f"replay{r}_lr{replay_lr:g}": rep(base, lr=replay_lr, replay_rows=r) for r in replay_rows}
    configs["long_lr1e-3"] = rep(base, steps=long_steps, eval_every=2 * base.eval_every)   # evals at the short runs' end too
    return configs


register(Experiment(
    name="forgetting",
    title="Catastrophic forgetting of pydoc while fine-tuning the lab LM on source code",
    track="Fine-tuning",
    page="experiments/forgetting.qmd",
    version=1,
    config_type=FinetuneConfig,
    scales={"smoke": forgetting_configs(SMOKE_BASE, lora_lrs=(1e-4,), full_lrs=(1e-4,), replay_rows=(2,),
                                        replay_lr=3e-3, long_steps=32),
            "cpu": forgetting_configs(CPU_BASE)},
    run=run,
    description="Original-domain loss before/after fine-tuning vs LR, rank, steps; replay as a mitigation.",
))
