"""Batch size at equal steps: how much of a big batch's advantage is just more data?

`batch_lr` gave every batch size the same number of training examples, so batch 32 took 16 steps where batch 4 took
128. This experiment gives batches 4, 8 and 16 batch 32's 16 steps instead (64, 128 and 256 examples) — and, added
after those, batches 64 and 128 (1,024 and 2,048 examples) — everything else as in `batch_lr` (LoRA rank 8 on stdlib source, the same LR grid and seeds); `batch_lr`'s batch 32 entry is the
16-step run at batch 32 and its batch 4 entry is batch 4 given batch 32's 512 examples in 128 steps. Between them:
the big batch's gain at equal steps, against what the same 512 examples buy when spent on more small steps.
"""

from __future__ import annotations

import dataclasses

from .batch_lr import CPU, SMOKE, BatchLRConfig, run
from .registry import Experiment, register

STEPS = 16                    # batch 32's steps in batch_lr (512 examples)
BATCHES = (4, 8, 16)
PAST = (64, 128)              # added after the first three: past batch 32 and the noise scale, does a doubling still pay?


def _scale(base: BatchLRConfig, steps: int, batches: tuple[int, ...] = BATCHES + PAST) -> dict[str, BatchLRConfig]:
    return {f"b{b}": dataclasses.replace(base, batch_size=b, examples=steps * b) for b in batches}


register(Experiment(
    name="batch_equal_steps",
    title="Batch size at equal steps: how much of a big batch's advantage is just more data?",
    track="Fine-tuning",
    page="experiments/batch-size.qmd",
    version=1,
    config_type=BatchLRConfig,
    scales={"smoke": _scale(SMOKE, 4, (4, 8)), "cpu": _scale(CPU, STEPS)},
    run=run,
    description="Batches 4 to 128 given batch 32's 16 steps (64-2,048 examples), the LR grid and seeds of batch_lr.",
))
