"""Benchmark: labpy's LoRA fine-tuning step against the same step through HF `Trainer` + peft.

Same model (the lab LM with LoRA on q, k, v, o, identical initialisation), same batches (B, T+1), same loss
(mean next-token cross-entropy on the T targets: HF gets `shift_labels`, so it shifts nothing), same optimizer
(AdamW, constant LR, no weight decay, gradient clipping at 1.0), one torch thread. Each side runs
`block_steps` steps per call — a whole `labpy.train.train` call, a whole `Trainer.train()` call — in blocks
that alternate (the order swaps every block), so drifts in machine load hit both. The headline throughput is
the steady state: steps from the start of the first step to the start of the last (a step's start is when
labpy asks for its batch, or Trainer's `on_step_begin`); each call's set-up (optimizer, data loader,
scheduler) is reported beside it. The
first losses of the two must agree: proof that both compute the same step. Target: ratio >= 1.0.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass

import pandas as pd
import torch

from ..device import lab_device, synchronize
from ..store import RunResult
from ..validation import check_ranges, int_at_least
from .registry import Experiment, RunContext, register

SIDES = ("labpy.train", "HF Trainer")


@dataclass(frozen=True)
class FinetuneBenchmarkConfig:
    base: str = "lab-lm:cpu"
    rank: int = 8
    lr: float = 1e-3
    batch_size: int = 8
    seq_len: int = 64
    block_steps: int = 40
    blocks: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive=("lr",), positive_int=("rank", "batch_size", "seq_len", "blocks"),
                     nonneg_int=("seed",), rules={"block_steps": int_at_least(2)})   # a rate needs two step starts


def _lora_model(config: FinetuneBenchmarkConfig):
    from ..models.lm import load_lm
    from ..models.lora import add_lora

    model, tokenizer = load_lm(config.base, attn_implementation="sdpa")
    torch.manual_seed(config.seed)
    return add_lora(model, config.rank).train(), tokenizer


class _Windows(torch.utils.data.Dataset):
    """(N, T+1) windows as HF examples: inputs are the first T tokens, targets the last T (already shifted)."""

    def __init__(self, windows: torch.Tensor) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        w = self.windows[i]
        return {"input_ids": w[:-1], "labels": w[1:], "shift_labels": w[1:]}


def _hf_trainer(model, windows: torch.Tensor, config: FinetuneBenchmarkConfig, output_dir: str,
                step_starts: list[float]):
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            step_starts.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=config.batch_size, max_steps=config.block_steps,
        learning_rate=config.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, logging_steps=1,
        save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        use_cpu=lab_device().type == "cpu",     # else Trainer puts model and batches on the GPU, as labpy does
        dataloader_pin_memory=False, remove_unused_columns=False, seed=config.seed, data_seed=config.seed)
    sampler_free = _Windows(windows)
    trainer = Trainer(model=model, args=args, train_dataset=sampler_free, callbacks=[StepClock()])
    trainer.remove_callback(PrinterCallback)                               # its per-step prints, not its work
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(sampler_free)  # batches in order
    return trainer


def run(config: FinetuneBenchmarkConfig, ctx: RunContext) -> RunResult:
    from ..finetune import lm_loss
    from ..tasks.corpus import lm_batch_fn
    from ..tasks.source_code import finetune_data
    from ..train import TrainSpec, train

    torch.set_num_threads(1)
    lab_model, tokenizer = _lora_model(config)
    hf_model, _ = _lora_model(config)
    data = finetune_data(tokenizer, config.seq_len, 8, 200_000)
    batch_fn = lm_batch_fn(data.source_train, config.batch_size, config.seq_len, config.seed)
    batches = [batch_fn(step) for step in range(config.block_steps)]              # (B, T+1) each
    windows = torch.cat(batches)                                                    # (steps·B, T+1)
    spec = TrainSpec(steps=config.block_steps, lr=config.lr, eval_every=config.block_steps, grad_clip=1.0,
                     seed=config.seed)
    first_loss: dict[str, float] = {}
    starts: dict[str, list[float]] = {side: [] for side in SIDES}     # when each step began, per block

    def labpy_block() -> None:
        def batch_at(step: int) -> torch.Tensor:                      # called once, at the start of each step
            starts[SIDES[0]].append(time.perf_counter())
            return batches[step]

        log = train(lab_model, batch_at, lm_loss, spec, progress=False)
        first_loss.setdefault(SIDES[0], float(log.steps.loss.iloc[0]))

    with tempfile.TemporaryDirectory() as output_dir:
        trainer = _hf_trainer(hf_model, windows, config, output_dir, starts[SIDES[1]])

        def hf_block() -> None:
            trainer.train()
            first_loss.setdefault(SIDES[1], float(trainer.state.log_history[0]["loss"]))

        blocks = dict(zip(SIDES, (labpy_block, hf_block)))
        rows = []
        for block in range(config.blocks + 1):                                     # block 0: warm-up, not kept
            order = SIDES if block % 2 else SIDES[::-1]
            for side in order:
                starts[side].clear()
                synchronize()
                start = time.perf_counter()
                blocks[side]()
                synchronize()
                seconds = time.perf_counter() - start
                # steady state: from the start of the first step to the start of the last (no set-up)
                steady = (len(starts[side]) - 1) / (starts[side][-1] - starts[side][0])
                if block:
                    rows.append({"block": block, "side": side, "steps_per_s": steady,
                                 "call_steps_per_s": config.block_steps / seconds,
                                 "setup_s": seconds - config.block_steps / steady})
    times = pd.DataFrame(rows)
    wide = times.pivot(index="block", columns="side", values="steps_per_s")
    calls = times.pivot(index="block", columns="side", values="call_steps_per_s")
    ratio = statistics.median(wide[SIDES[0]] / wide[SIDES[1]])
    summary = {"throughput_ratio": ratio, "call_throughput_ratio": statistics.median(calls[SIDES[0]] / calls[SIDES[1]]),
               "labpy_steps_per_s": float(wide[SIDES[0]].median()), "hf_steps_per_s": float(wide[SIDES[1]].median()),
               **{f"setup_s_{'labpy' if side == SIDES[0] else 'hf'}": float(times[times.side == side].setup_s.median())
                  for side in SIDES},
               "first_loss_labpy": first_loss[SIDES[0]],
               "first_loss_hf": first_loss[SIDES[1]], "tokens_per_step": config.batch_size * config.seq_len,
               "trainable_params": sum(p.numel() for p in lab_model.parameters() if p.requires_grad)}
    print(f"labpy / HF Trainer throughput: {ratio:.3f}  (target >= 1.0); first losses "
          f"{summary['first_loss_labpy']:.5f} vs {summary['first_loss_hf']:.5f}")
    return RunResult(tables={"blocks": times}, summary=summary, seed=config.seed)


register(Experiment(
    name="finetune_benchmark",
    title="Benchmark: labpy's LoRA fine-tuning step vs HF Trainer + peft",
    track="The lab itself",
    page="experiments/benchmarks.qmd",
    version=1,
    config_type=FinetuneBenchmarkConfig,
    scales={"smoke": {"ratio": FinetuneBenchmarkConfig(base="lab-lm:smoke", batch_size=2, seq_len=16, block_steps=3,
                                                       blocks=2)},
            "cpu": {"ratio": FinetuneBenchmarkConfig()}},
    run=run,
    description="Throughput ratio measured side by side in one run, blocks interleaved; target >= 1.0.",
))
