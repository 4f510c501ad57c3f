"""Is forgotten knowledge gone, or only masked? The lab LM fine-tuned until it forgets pydoc, then trained briefly on
pydoc again.

Stage 1 repeats `lora_rank`'s full fine-tuning at lr 1e-3 (every parameter, 300 steps on stdlib source), the run that
forgot most among those at the learning rate the lab LM's pages use: its held-out pydoc loss rises by well over a
nat. Stage 2 trains the fine-tuned model on the lab LM's own pydoc training split (100 steps at the fine-tuning's
rate, or 300 at a tenth of it), with the held-out pydoc and source losses measured every few steps. If the
knowledge were gone, getting it back would cost something like the pretraining that put it there; if it is masked,
a few steps should bring it back, and the new skill need not go. Two more measurements make the reading concrete: the same pydoc steps given to the base
model (what extra pydoc training does to a model that forgot nothing), and the distances of the three weight sets
(base, fine-tuned, recovered) from one another: does recovery walk back toward the base?
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd
import torch

from ..finetune import FinetuneConfig, finetune, load_base, loss_summary, make_trainable, run_finetune
from ..store import RunResult
from ..tasks.corpus import lm_batch_fn
from ..train import TrainSpec
from ..validation import check_ranges
from .lab_lm import SMOKE as LAB_LM_SMOKE
from .lab_lm import LabLMConfig
from .lora_rank import CPU_BASE, SMOKE_BASE
from .registry import Experiment, RunContext, register

PYDOC_SEED_OFFSET = 104_729      # the recovery batches are not the replay batches of `forgetting` (offset 7,919)


@dataclass(frozen=True)
class ForgettingRecoveryConfig:
    recover_steps: int = 100         # pydoc steps after fine-tuning
    recover_lr: float = 1e-3         # constant, after a short warm-up: the fine-tuning's own rate
    recover_warmup: int = 5
    recover_eval_every: int = 5
    smoke: bool = False              # the smoke lab LM and `lora_rank`'s smoke fine-tuning instead of the cpu ones

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("recover_steps", "recover_eval_every"), positive=("recover_lr",),
                     nonneg_int=("recover_warmup",))

    def finetune(self) -> FinetuneConfig:
        """`lora_rank`'s full fine-tuning at lr 1e-3, exactly (its smoke twin at the smoke scale)."""
        return dataclasses.replace(SMOKE_BASE if self.smoke else CPU_BASE, rank=0, lr=1e-3)

    def recover_spec(self, seed: int) -> TrainSpec:
        return TrainSpec(steps=self.recover_steps, lr=self.recover_lr, warmup_steps=self.recover_warmup,
                         eval_every=self.recover_eval_every, seed=seed,
                         resume_every=max(10, self.recover_steps // 4))


def flat_weights(model: torch.nn.Module) -> torch.Tensor:
    """Every parameter, flattened into one fp32 vector on the CPU, in `named_parameters` order."""
    return torch.cat([p.detach().float().cpu().flatten() for _, p in model.named_parameters()])


def run(config: ForgettingRecoveryConfig, ctx: RunContext) -> RunResult:
    ft = config.finetune()
    outcome = run_finetune(ft, ctx.work_dir / "finetune", ctx.progress, desc="forgetting_recovery: fine-tune")
    base_model, _ = load_base(ft.base)
    base = flat_weights(base_model)
    finetuned = flat_weights(outcome.model)
    pydoc_batches = lm_batch_fn(outcome.data.pydoc_train, ft.batch_size, ft.seq_len, ft.seed + PYDOC_SEED_OFFSET)
    spec = config.recover_spec(ft.seed)
    recovered_log = finetune(outcome.model, pydoc_batches, spec, outcome.data.eval_sets,
                             work_dir=ctx.work_dir / "recover", progress=ctx.progress,
                             desc="forgetting_recovery: pydoc again")
    recovered = flat_weights(outcome.model)
    control = make_trainable(base_model, rank=0, alpha=0.0, targets=ft.targets, seed=ft.seed)
    control_log = finetune(control, pydoc_batches, spec, outcome.data.eval_sets, work_dir=ctx.work_dir / "control",
                           progress=ctx.progress, desc="forgetting_recovery: base on pydoc")
    evals = pd.concat([outcome.log.evals.assign(stage="fine-tune on source"),
                       recovered_log.evals.assign(stage="pydoc again"),
                       control_log.evals.assign(stage="base on pydoc (control)")], ignore_index=True)
    distances = {"finetuned_from_base": float((finetuned - base).norm()),
                 "recovered_from_base": float((recovered - base).norm()),
                 "recovered_from_finetuned": float((recovered - finetuned).norm()),
                 "base_norm": float(base.norm())}
    summary = {"finetune": loss_summary(outcome.log), "recover": loss_summary(recovered_log),
               "control": loss_summary(control_log), "distances": distances,
               "pretraining_steps": (LAB_LM_SMOKE if config.smoke else LabLMConfig()).steps}
    return RunResult(tables={"evals": evals}, summary=summary, seed=ft.seed)


register(Experiment(
    name="forgetting_recovery",
    title="Forgotten or masked: the lab LM fine-tuned on code, then trained briefly on pydoc again",
    track="Fine-tuning",
    page="experiments/forgetting.qmd",
    version=1,
    config_type=ForgettingRecoveryConfig,
    scales={"smoke": {"full-lr1e-3": ForgettingRecoveryConfig(recover_steps=8, recover_eval_every=2, recover_warmup=1,
                                                              smoke=True)},
            "cpu": {"full-lr1e-3": ForgettingRecoveryConfig(),
                    # a rate that should leave the base model unharmed, for three times as many steps
                    "recover-lr1e-4": ForgettingRecoveryConfig(recover_steps=300, recover_lr=1e-4,
                                                               recover_eval_every=10)}},
    run=run,
    description="lora_rank's full fine-tuning at lr 1e-3, then steps on pydoc (100 at 1e-3, 300 at 1e-4): how fast the "
                "forgotten loss comes back, whether the code skill stays, whether the weights walk back; the base given "
                "the same steps.",
))
