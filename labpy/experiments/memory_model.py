"""The memory model of fine-tuning (`labpy.memory`) checked against measurements, then extrapolated to 7B.

Two measurements per case, each case in a fresh Python process (so nothing of another case stays resident):

1. Bytes autograd saves for backward, counted by `torch.autograd.graph.saved_tensors_hooks` during the first
   step: exact, and independent of the allocator — it checks the activation terms one by one.
2. Peak growth of live tensor bytes over two steps from scratch, from torch.profiler's memory timeline: what
   PyTorch's allocator hands out — the CPU's analogue of `torch.cuda.max_memory_allocated`. It checks the
   whole model: gradients, Adam state, activations and transients, and when each exists.
3. Peak resident memory growth over a few real training steps (AdamW, the lab's `lm_loss`): the process's
   high-water mark (`VmHWM`, reset through `/proc/self/clear_refs` after the model is loaded) minus its
   resident size before the first step. It checks the whole model — gradients, Adam state, activations and
   transients — against what the operating system really gave the process. glibc's dynamic mmap threshold is
   pinned (`MALLOC_MMAP_THRESHOLD_`), so every large tensor is its own mapping, returned to the system when
   freed: the resident size then follows the live tensors instead of a heap's fragmentation. Its excess over
   (2) is what the libraries and the allocator add — on a GPU, the CUDA context and the caching allocator's
   slack play that part, which the extrapolation sets aside as a reserve.

Why not CUDA's `max_memory_allocated`: there is no GPU here; the extrapolation to Qwen2.5-7B on a 16 GB GPU
assumes the same code path (HF Qwen2, bitsandbytes nf4, peft, sdpa attention) keeps the same tensors there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from ..memory import (ALL_LINEAR, ATTN_TARGETS, GIB, QWEN25_7B, Arch, Setup, activation_bytes, fit_table,
                      optimizer_bytes, peak_bytes, resident_model_bytes, rope_buffer_bytes, saved_tensor_bytes,
                      tensor_peak_bytes, training_growth_bytes, weight_bytes)
from ..errors import ConfigError
from ..store import RunResult
from ..validation import check_ranges, require
from .registry import Experiment, RunContext, register

TARGET_SETS = {"attn": ATTN_TARGETS, "all": ALL_LINEAR}


@dataclass(frozen=True)
class Case:
    """One measured fine-tuning configuration, written as `quant,attn,targets,rank,gc,batch,seq_len`."""

    quant: str | None
    attn: str
    targets: str          # "attn" or "all"
    rank: int             # 0 = full fine-tuning
    gc: bool
    batch: int
    seq_len: int

    @classmethod
    def parse(cls, text: str) -> Case:
        quant, attn, targets, rank, gc, batch, seq_len = text.split(",")
        if targets not in TARGET_SETS:
            raise ValueError(f"case {text!r}: targets must be one of {sorted(TARGET_SETS)}, got {targets!r}")
        return cls(None if quant == "fp32" else quant, attn, targets, int(rank), gc == "gc", int(batch), int(seq_len))

    def setup(self) -> Setup:
        return Setup(quant=self.quant, rank=self.rank, targets=TARGET_SETS[self.targets], grad_checkpointing=self.gc,
                     attn=self.attn, compute_bytes=4)

    def label(self) -> str:
        how = "full FT" if self.rank == 0 else f"LoRA r={self.rank} ({self.targets})"
        return (f"{self.quant or 'fp32'} · {how} · {self.attn}{' · checkpointing' if self.gc else ''} · "
                f"{self.batch}×{self.seq_len}")


@dataclass(frozen=True)
class MemoryModelConfig:
    # the measured model: a random-weight Qwen2 large enough that the terms dwarf the process's noise
    hidden: int = 512
    layers: int = 4
    heads: int = 8
    kv_heads: int = 2
    intermediate: int = 1536
    vocab: int = 8192
    steps: int = 3                 # training steps per measured case (Adam state exists from step 1 on)
    cases: tuple[str, ...] = (
        "fp32,sdpa,attn,16,nogc,4,256", "fp32,sdpa,attn,16,nogc,8,256", "fp32,sdpa,attn,16,nogc,4,512",
        "fp32,eager,attn,16,nogc,4,512", "fp32,sdpa,attn,16,gc,8,256", "4bit,sdpa,all,16,nogc,4,256",
        "4bit,sdpa,all,16,gc,8,256", "fp32,sdpa,attn,0,nogc,4,256")
    # the extrapolation: Qwen2.5-7B in 4-bit QLoRA (bf16 compute) on a 16 GiB GPU
    capacity_gib: float = 16.0
    reserve_gib: float = 1.5       # CUDA context (~0.5 GiB) and allocator fragmentation / workspaces (~1 GiB)
    target_rank: int = 16
    batches: tuple[int, ...] = (1, 2, 4, 8, 16)
    seq_lens: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    isolate: bool = True           # each case in a fresh process (smoke: in this one, for speed)
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "steps",
                                         "batches", "seq_lens"),
                     nonneg_int=("target_rank", "seed"), positive=("capacity_gib",), nonneg=("reserve_gib",),
                     nonempty=("cases", "batches", "seq_lens"))
        require(self, self.hidden % self.heads == 0, "hidden",
                f"is out of range; it must be a multiple of heads = {self.heads}")
        require(self, self.heads % self.kv_heads == 0, "heads",
                f"is out of range; it must be a multiple of kv_heads = {self.kv_heads} (grouped-query attention)")
        require(self, self.reserve_gib < self.capacity_gib, "reserve_gib",
                f"is out of range; it must be below capacity_gib = {self.capacity_gib}")
        for text in self.cases:
            try:
                case = Case.parse(text)
                case.setup()
                ok = case.rank >= 0 and case.batch >= 1 and case.seq_len >= 1 and text.split(",")[4] in ("gc", "nogc")
            except (ValueError, TypeError):
                ok = False
            if not ok:
                raise ConfigError(
                    f"MemoryModelConfig.cases entry {text!r} is not a case; write quant,attn,targets,rank,gc,batch,"
                    f"seq_len with quant fp32|8bit|4bit, attn sdpa|eager, targets attn|all, rank >= 0 (0: full "
                    f"fine-tuning), gc|nogc, batch >= 1, seq_len >= 1, e.g. fp32,sdpa,attn,16,nogc,4,256",
                    config="MemoryModelConfig", field="cases", value=self.cases)

    def arch(self) -> Arch:
        return Arch(hidden=self.hidden, layers=self.layers, heads=self.heads, kv_heads=self.kv_heads,
                    intermediate=self.intermediate, vocab=self.vocab, tie_embeddings=True)

    def hf_config(self):
        return self.arch().hf_config(max_positions=4096)


def qwen7b_setups(rank: int) -> dict[str, Setup]:
    """The extrapolated recipes: QLoRA on every linear layer (the QLoRA paper's choice), bf16 compute."""
    base = Setup(quant="4bit", rank=rank, targets=ALL_LINEAR, attn="sdpa", param_bytes=4, act_bytes=4,
                 compute_bytes=2)
    return {"no checkpointing": base, "gradient checkpointing": Setup(**{**asdict(base), "grad_checkpointing": True})}


# ---- one measured case, in its own process ----

def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def measure_case(config: MemoryModelConfig, case: Case, checkpoint: Path) -> dict[str, float]:
    """Run `config.steps` training steps of `case` in this process; return saved bytes and peak RSS growth."""
    import gc

    from ..finetune import lm_loss
    from ..models.lm import load_lm
    from ..models.lora import add_lora

    torch.set_num_threads(1)
    model, _ = load_lm(str(checkpoint), case.quant, attn_implementation=case.attn)
    if case.rank:
        model = add_lora(model, case.rank, targets=TARGET_SETS[case.targets], gradient_checkpointing=case.gc)
    else:
        model.requires_grad_(True)
        if case.gc:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batch = torch.randint(0, config.vocab, (case.batch, case.seq_len + 1),
                          generator=torch.Generator().manual_seed(config.seed))          # (B, T+1)
    resident = resident_model_bytes(model) - rope_buffer_bytes(model)
    gc.collect()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")                   # reset the high-water mark to "now"
    saved = 0
    for step in range(config.steps):
        optimizer.zero_grad(set_to_none=True)
        if step == 0:
            saved, _ = saved_tensor_bytes(model, lambda: lm_loss(model, batch))   # runs backward too
        else:
            lm_loss(model, batch).backward()
        optimizer.step()
    peak = _status_kib("VmHWM")
    # then the same steps again from scratch (no gradients, a new optimizer), under the memory profiler
    del optimizer
    model.zero_grad(set_to_none=True)
    gc.collect()
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def steps() -> None:
        for _ in range(min(2, config.steps)):
            optimizer.zero_grad(set_to_none=True)
            lm_loss(model, batch).backward()
            optimizer.step()

    tensors = tensor_peak_bytes(steps)
    return {"saved_bytes": saved, "rss_growth_bytes": (peak - before) * 1024, "tensor_growth_bytes": tensors,
            "resident_model_bytes": resident, "trainable": sum(p.numel() for p in params)}


def _measure_in_subprocess(config: MemoryModelConfig, case_text: str, checkpoint: Path) -> dict[str, float]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "LAB_TORCH_THREADS": "1"}
    payload = json.dumps({"config": asdict(config), "case": case_text, "checkpoint": str(checkpoint)})
    done = subprocess.run([sys.executable, "-m", "labpy.experiments.memory_model", payload], capture_output=True,
                          text=True, env=env, timeout=900)
    if done.returncode:
        raise RuntimeError(f"measuring case {case_text!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _main(payload: str) -> None:
    data = json.loads(payload)
    raw = data["config"]
    config = MemoryModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    print(json.dumps(measure_case(config, Case.parse(data["case"]), Path(data["checkpoint"]))))


# ---- the run ----

def run(config: MemoryModelConfig, ctx: RunContext) -> RunResult:
    from transformers import Qwen2ForCausalLM
    from tqdm.auto import tqdm

    checkpoint = ctx.work_dir / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        torch.manual_seed(config.seed)
        Qwen2ForCausalLM(config.hf_config()).save_pretrained(checkpoint)
    arch = config.arch()
    rows = []
    for text in tqdm(config.cases, desc="memory cases", disable=not ctx.progress):
        case = Case.parse(text)
        measured = (_measure_in_subprocess(config, text, checkpoint) if config.isolate
                    else measure_case(config, case, checkpoint))
        setup = case.setup()
        acts = activation_bytes(arch, setup, case.batch, case.seq_len)
        rows.append({"case": text, "label": case.label(), "quant": case.quant or "fp32", "attn": case.attn,
                     "rank": case.rank, "gc": case.gc, "batch": case.batch, "seq_len": case.seq_len,
                     "saved_measured": measured["saved_bytes"], "saved_model": sum(acts.values()),
                     "tensors_measured": measured["tensor_growth_bytes"], "rss_measured": measured["rss_growth_bytes"],
                     "growth_model": training_growth_bytes(arch, setup, case.batch, case.seq_len),
                     "weights_measured": measured["resident_model_bytes"],
                     "weights_model": sum(weight_bytes(arch, setup).values()),
                     "trainable": measured["trainable"], **{f"opt_{k}": v for k, v in optimizer_bytes(arch, setup).items()}})
    cases = pd.DataFrame(rows)
    for what in ("saved", "weights"):
        cases[f"{what}_error"] = cases[f"{what}_model"] / cases[f"{what}_measured"] - 1
    cases["tensors_error"] = cases.growth_model / cases.tensors_measured - 1
    cases["rss_error"] = cases.growth_model / cases.rss_measured - 1
    cases["rss_excess_mib"] = (cases.rss_measured - cases.tensors_measured) / 2**20

    setups = qwen7b_setups(config.target_rank)
    capacity, reserve = config.capacity_gib * GIB, config.reserve_gib * GIB
    fits = fit_table(QWEN25_7B, setups, config.batches, config.seq_lens, capacity, reserve)
    breakdown = []
    for name, setup in {**setups, "no checkpointing, bf16 embeddings and head (no upcast)":
                        Setup(**{**asdict(setups["no checkpointing"]), "param_bytes": 2})}.items():
        for batch, seq_len in ((1, 512), (1, 2048), (4, 2048)):
            for part, value in peak_bytes(QWEN25_7B, setup, batch, seq_len).items():
                breakdown.append({"setup": name, "batch": batch, "seq_len": seq_len, "part": part, "gib": value / GIB})
    fitting = fits[fits.fits]
    summary = {
        "max_abs_saved_error": float(cases.saved_error.abs().max()),
        "max_abs_tensors_error": float(cases.tensors_error.abs().max()),
        "max_abs_rss_error": float(cases.rss_error.abs().max()),
        "mean_abs_rss_error": float(cases.rss_error.abs().mean()),
        "max_rss_excess_mib": float(cases.rss_excess_mib.max()),
        "max_abs_weights_error": float(cases.weights_error.abs().max()),
        "measured_params": arch.n_params(),
        "qwen7b_params": QWEN25_7B.n_params(),
        "qwen7b_trainable": int(peak_bytes(QWEN25_7B, setups["no checkpointing"], 1, 1)["gradients"] // 4),
        **{f"max_tokens_{'gc' if s.grad_checkpointing else 'nogc'}":
           int(fitting[fitting.setup == n].tokens.max()) if (fitting.setup == n).any() else 0
           for n, s in setups.items()},
        "usable_gib": config.capacity_gib - config.reserve_gib,
    }
    return RunResult(tables={"cases": cases, "fits": fits, "breakdown": pd.DataFrame(breakdown)}, summary=summary,
                     seed=config.seed)


SMOKE = MemoryModelConfig(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=256, steps=2,
                          cases=("fp32,sdpa,attn,4,nogc,2,32", "fp32,eager,attn,4,nogc,2,32", "4bit,sdpa,all,4,gc,2,32"),
                          batches=(1, 4), seq_lens=(512, 2048), isolate=False)

register(Experiment(
    name="memory_model",
    title="A memory model of fine-tuning, checked on the CPU, extrapolated to Qwen2.5-7B on 16 GB",
    track="Fine-tuning",
    page="experiments/memory-model.qmd",
    version=1,
    config_type=MemoryModelConfig,
    scales={"smoke": {"check": SMOKE}, "cpu": {"check": MemoryModelConfig()}},
    run=run,
    description="Saved-tensor bytes and peak RSS of real steps vs the model; which batch × length fit 7B QLoRA.",
    device="cpu",   # it measures the CPU process itself (resident size, CPU tensor bytes), whatever GPU is present
))


if __name__ == "__main__":
    _main(sys.argv[1])
