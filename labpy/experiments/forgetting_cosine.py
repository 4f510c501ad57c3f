"""Does forgetting level off when the learning rate decays?

`forgetting`'s long run (LoRA rank 8, LR 1e-3 held constant after warm-up, 600 steps) kept forgetting pydoc to the
end. This experiment repeats it with a cosine decay of the same peak LR to zero over the same 600 steps, everything
else equal (the data, the batches, the adapters' initialisation), so the two runs differ only in the schedule.
"""

from __future__ import annotations

import dataclasses

from ..finetune import FinetuneConfig
from .forgetting import forgetting_configs, run
from .lora_rank import CPU_BASE, SMOKE_BASE
from .registry import Experiment, register


def cosine_of_long_run(base: FinetuneConfig, long_steps: int) -> dict[str, FinetuneConfig]:
    """`forgetting`'s long run with `schedule="cosine"`."""
    long = forgetting_configs(base, long_steps=long_steps)["long_lr1e-3"]
    return {"long_cosine_lr1e-3": dataclasses.replace(long, schedule="cosine")}


register(Experiment(
    name="forgetting_cosine",
    title="Does forgetting level off when the learning rate decays?",
    track="Fine-tuning",
    page="experiments/forgetting.qmd",
    version=1,
    config_type=FinetuneConfig,
    scales={"smoke": cosine_of_long_run(SMOKE_BASE, 32), "cpu": cosine_of_long_run(CPU_BASE, 600)},
    run=run,
    description="forgetting's 600-step LoRA run with a cosine decay of its LR instead of a constant LR.",
))
