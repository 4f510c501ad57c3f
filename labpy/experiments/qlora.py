"""QLoRA: the same LoRA fine-tuning of the lab LM on stdlib source code with an fp32, an 8-bit and a 4-bit base.

Runs (one store entry each):
- `fp32`, `8bit`, `4bit`: load the base at that precision (`load_lm`), measure its memory footprint and the
  quantization error of every linear weight against the fp32 weights, then — on a freshly loaded model (the
  4-bit eval-then-train trap) — add LoRA and fine-tune with `labpy.finetune`, tracking held-out loss on the
  new domain (source) and the original one (pydoc) from step 0.
- `timing`: the three bases side by side in one process, blocks of training steps interleaved (the order
  rotates each block) on the same batches, so machine load hits all three alike; step-time ratios to fp32.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import pandas as pd
import torch

from ..device import lab_device, synchronize, to_device
from ..finetune import finetune, lm_loss, load_base, loss_summary
from ..store import RunResult
from ..train import TrainSpec
from ..validation import check_ranges, one_of
from .registry import Experiment, RunContext, register

QUANTS = ("fp32", "8bit", "4bit")


@dataclass(frozen=True)
class QLoRAConfig:
    quant: str = "fp32"            # "fp32", "8bit", "4bit"; "all" for the timing run
    base: str = "lab-lm:cpu"
    rank: int = 8
    lr: float = 1e-3
    steps: int = 300
    batch_size: int = 8
    seq_len: int = 64
    warmup_steps: int = 20
    eval_every: int = 25
    eval_windows: int = 64
    source_chars: int = 400_000
    timing_blocks: int = 6         # timing run: blocks per base, interleaved
    timing_steps: int = 10         # timing run: steps per block
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive=("lr",), nonneg_int=("warmup_steps", "seed"),
                     positive_int=("rank", "steps", "batch_size", "seq_len", "eval_every", "eval_windows",
                                   "source_chars", "timing_blocks", "timing_steps"),
                     rules={"quant": one_of(*QUANTS, "all")})

    def quant_arg(self) -> str | None:
        if self.quant not in QUANTS:
            raise ValueError(f"quant must be one of {QUANTS} for a training run, got {self.quant!r}")
        return None if self.quant == "fp32" else self.quant


def base_entry_key(base: str) -> str:
    """The store key of the lab LM a run fine-tuned (so a retrained lab LM shows as a different base)."""
    import json

    from ..models.lab_lm import READY_MARKER
    from ..models.lm import resolve

    kind, path = resolve(base)
    return json.loads((path / READY_MARKER).read_text())["key"] if kind == "lab" else base


def dequantized_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """The weight a bitsandbytes layer computes with, as fp32 (None for a full-precision layer)."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    if isinstance(module, bnb.nn.Linear4bit):
        return dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    if isinstance(module, bnb.nn.Linear8bitLt):    # LLM.int8: int8 codes times a per-row absmax / 127
        scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
        return module.weight.data.float() * scb.float()[:, None] / 127
    return None


def quantization_error(quantized: torch.nn.Module, reference: torch.nn.Module) -> pd.DataFrame:
    """Relative Frobenius error ‖W_q − W‖ / ‖W‖ of every quantized linear layer, and the largest |W_q − W|."""
    weights = dict(reference.named_modules())
    rows = []
    for name, module in quantized.named_modules():
        w_q = dequantized_weight(module)
        if w_q is None:
            continue
        w = weights[name].weight.detach().float()
        layer = int(name.split(".")[2]) if ".layers." in f".{name}" else -1
        rows.append({"module": name, "layer": layer, "kind": name.rsplit(".", 1)[-1], "params": w.numel(),
                     "rel_error": float((w_q - w).norm() / w.norm()),
                     "max_abs_error": float((w_q - w).abs().max()), "weight_absmax": float(w.abs().max())})
    return pd.DataFrame(rows)


def _data(config: QLoRAConfig, tokenizer):
    from ..tasks.corpus import lm_batch_fn
    from ..tasks.source_code import finetune_data

    data = finetune_data(tokenizer, config.seq_len, config.eval_windows, config.source_chars)
    return data, lm_batch_fn(data.source_train, config.batch_size, config.seq_len, config.seed)


def _lora_model(config: QLoRAConfig, quant: str | None):
    from ..models.lora import add_lora

    model, tokenizer = load_base(config.base, quant)      # always a fresh load: never train a model that evaluated
    torch.manual_seed(config.seed)                   # the same LoRA initialisation for every base
    return add_lora(model, config.rank), tokenizer


def run_training(config: QLoRAConfig, ctx: RunContext) -> RunResult:
    from ..memory import resident_model_bytes

    quant = config.quant_arg()
    base, tokenizer = load_base(config.base, quant)
    footprint, resident = base.get_memory_footprint(), resident_model_bytes(base)
    errors = quantization_error(base, load_base(config.base)[0]) if quant else pd.DataFrame()
    del base
    model, tokenizer = _lora_model(config, quant)
    data, batch_fn = _data(config, tokenizer)
    spec = TrainSpec(steps=config.steps, lr=config.lr, warmup_steps=config.warmup_steps, eval_every=config.eval_every,
                     seed=config.seed, resume_every=max(50, config.steps // 4))
    start = time.perf_counter()
    log = finetune(model, batch_fn, spec, data.eval_sets, work_dir=ctx.work_dir, progress=ctx.progress,
                   desc=f"qlora {config.quant}")
    summary = {**loss_summary(log), "memory_footprint_bytes": footprint, "resident_bytes": resident,
               "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "train_seconds": time.perf_counter() - start, "base_key": base_entry_key(config.base), **data.info}
    if len(errors):
        summary |= {"mean_rel_error": float(errors.rel_error.mean()), "max_rel_error": float(errors.rel_error.max())}
    tables = {"steps": log.steps, "evals": log.evals}
    if len(errors):
        tables["quant_error"] = errors
    return RunResult(tables=tables, summary=summary, seed=config.seed)


def interleaved_step_seconds(models: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                             batches: list[torch.Tensor], blocks: int, device: torch.device) -> pd.DataFrame:
    """Seconds per LoRA step of each model, in blocks of `len(batches)` steps interleaved with a rotating order
    (so a slow spell of a shared machine hits every model alike), after one warm-up block each."""
    names = list(models)

    def block(name: str) -> float:
        model, optimizer = models[name], optimizers[name]
        synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            lm_loss(model, batch).backward()
            optimizer.step()
        synchronize(device)                                   # queued GPU work belongs to this block
        return (time.perf_counter() - start) / len(batches)

    for name in names:                                        # warm-up: first calls pay for lazy initialisation
        block(name)
    rows = []
    for b in range(blocks):
        k = b % len(names)
        for name in names[k:] + names[:k]:
            rows.append({"block": b, "base": name, "seconds_per_step": block(name)})
    return pd.DataFrame(rows)


def run_timing(config: QLoRAConfig, ctx: RunContext) -> RunResult:
    """Blocks of `timing_steps` LoRA steps per base, interleaved with a rotating order; seconds per step."""
    models, optimizers = {}, {}
    for name in QUANTS:
        model, tokenizer = _lora_model(config, None if name == "fp32" else name)
        model.train()
        models[name] = model
        optimizers[name] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    _, batch_fn = _data(config, tokenizer)
    device = lab_device()
    batches = [to_device(batch_fn(step), device) for step in range(config.timing_steps)]  # (B, T+1) each, shared

    torch.set_num_threads(1)
    times = interleaved_step_seconds(models, optimizers, batches, config.timing_blocks, device)
    wide = times.pivot(index="block", columns="base", values="seconds_per_step")
    summary = {f"step_time_ratio_{q}": statistics.median(wide[q] / wide["fp32"]) for q in ("8bit", "4bit")}
    summary |= {f"ms_per_step_{q}": 1000 * float(wide[q].median()) for q in QUANTS}
    return RunResult(tables={"timing": times}, summary=summary, seed=config.seed)


def run(config: QLoRAConfig, ctx: RunContext) -> RunResult:
    return run_timing(config, ctx) if config.quant == "all" else run_training(config, ctx)


def _configs(**kw) -> dict[str, QLoRAConfig]:
    return {**{q: QLoRAConfig(quant=q, **kw) for q in QUANTS}, "timing": QLoRAConfig(quant="all", **kw)}


register(Experiment(
    name="qlora",
    title="QLoRA: fine-tuning the lab LM with an fp32, 8-bit and 4-bit (nf4) base",
    track="Fine-tuning",
    page="experiments/qlora.qmd",
    version=1,
    config_type=QLoRAConfig,
    scales={"smoke": _configs(base="lab-lm:smoke", lr=3e-3, steps=12, batch_size=4, seq_len=32, warmup_steps=2,
                              eval_every=6, eval_windows=8, source_chars=60_000, timing_blocks=2, timing_steps=2),
            "cpu": _configs()},
    run=run,
    description="Memory, step time, quality gap and weight quantization error of 8-bit and 4-bit bases.",
))
