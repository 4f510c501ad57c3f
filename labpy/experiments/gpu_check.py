"""What a GPU measures that the CPU can only model: 7B QLoRA memory and speed, a 7B capture, small-model steps.

The hardware page and the memory model answer "is a 16 GB card enough?" from models: `labpy.memory` for the
bytes of a QLoRA step (checked on the CPU at 10M parameters), `labpy.hardware.capture_bytes` for a capture,
a fraction of the quoted peak (`hardware.MFU`) for time and a per-step floor (`hardware.STEP_FLOOR_S`) for the
lab's small models. On a CUDA machine this experiment measures each of them:

1. A Qwen2.5-7B-shaped model with random weights (the shape is what memory and time depend on; no hub
   download), saved and loaded through the lab's own path, `load_lm(path, "4bit")`: the resident bytes of the
   4-bit model against `weight_bytes`.
2. A full capture (every attention pattern and the residual stream after every block, `hf_hooks`) at several
   lengths: CUDA's peak allocated bytes against `capture_bytes`, and its time against a plain forward.
3. QLoRA steps (`add_lora` on every linear layer, rank 16, AdamW, the lab's `lm_loss`) at several batch ×
   length, with and without gradient checkpointing: the peak against `peak_bytes`, the step time against the
   modelled FLOPs (the achieved fraction of the card's peak).
4. One training step of the lab's small models — the wind tunnels' `cpu` and `gpu` shapes and the lab LM —
   timed in the same loop the runs use (a fresh batch, forward, backward, AdamW): the per-step floor.

Also measured: the CUDA context (memory the driver takes before PyTorch allocates anything) and the
allocator's slack (reserved − allocated at the peak), which the memory model sets aside as a reserve.

Follow-up questions run as their own configs (`part`), each a few seconds to a minute on a GPU: which
attention kernel PyTorch picks for the lab's fp32 grouped-query call; where a small model's step goes
(building the batch vs the step); the lab LM's LoRA step on fp32, 8-bit and 4-bit bases; and a small model's
step under `torch.compile` and CUDA graphs.
The `smoke` scale runs the same code on the CPU at toy sizes (memory then from torch.profiler's timeline).
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from ..device import lab_device, synchronize
from ..errors import ConfigError
from ..memory import GIB, Arch, Setup, peak_bytes, resident_model_bytes, weight_bytes
from ..store import RunResult
from ..validation import check_ranges, one_of
from .registry import Experiment, RunContext, register


@dataclass(frozen=True)
class GpuCheckConfig:
    model: str = "Qwen2.5-7B"            # a name in labpy.hardware.MODELS: the shape of the random-weight model
    rank: int = 16
    capture_lens: tuple[int, ...] = (512, 1024, 2048)
    # QLoRA cases, "batch,seq_len,gc|nogc" and optionally ",bf16" (the loss under bf16 autocast, as HF Trainer's
    # bf16=True runs it); 1 × 2048 with checkpointing is the memory model's frontier on a 16 GB card
    qlora_cases: tuple[str, ...] = ("1,512,gc", "1,1024,gc", "1,2048,gc", "2,2048,gc", "8,2048,gc", "1,512,nogc",
                                    "1,2048,nogc", "1,2048,gc,bf16")
    compare_len: int = 2048              # tokens of the bf16-vs-4-bit forward timing (the dequantization's cost)
    qlora_steps: int = 3                 # steps per case; the first creates Adam's state, the rest are timed
    small_scales: tuple[str, ...] = ("cpu", "gpu")   # wind-tunnel shapes timed, one seed per task × model
    small_steps: int = 60                # timed steps per small model, after `small_warmup`
    small_warmup: int = 10
    # a stand-in shape for the smoke scale (MODELS names only real shapes); 0 = use `model`
    toy_hidden: int = 0
    # "all": everything above; "attention-kernels": only which scaled-dot-product-attention kernels accept the
    # lab's attention (fp32 or bf16, grouped-query or repeated K/V) and what each keeps for backward;
    # "small-steps": where a small model's step goes (building the batch on the CPU vs the step on the GPU);
    # "lab-lm-quant": the qlora page's timing (LoRA steps on fp32, 8-bit and 4-bit bases, interleaved) on a
    # random-weight lab LM; "compiled-steps": the paper-sized bijection transformer's step, eager against
    # torch.compile in each of `compile_modes` ("reduce-overhead" replays CUDA graphs)
    part: str = "all"
    compile_modes: tuple[str, ...] = ("default", "reduce-overhead")
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("rank", "capture_lens", "qlora_steps", "small_steps", "compare_len"),
                     nonneg_int=("small_warmup", "toy_hidden", "seed"), nonempty=("qlora_cases",),
                     rules={"part": one_of("all", "attention-kernels", "small-steps", "lab-lm-quant", "compiled-steps"),
                            "compile_modes": one_of("default", "reduce-overhead", "max-autotune")})
        from ..hardware import MODELS

        if self.model not in MODELS:
            raise ConfigError(f"GpuCheckConfig.model = {self.model!r} is not a model shape; use one of "
                              f"{', '.join(MODELS)}", config="GpuCheckConfig", field="model", value=self.model)
        for text in self.qlora_cases:
            parts = text.split(",")
            if (len(parts) not in (3, 4) or not all(p.isdigit() and int(p) > 0 for p in parts[:2])
                    or parts[2] not in ("gc", "nogc") or parts[3:] not in ([], ["bf16"])):
                raise ConfigError(f"GpuCheckConfig.qlora_cases entry {text!r} is not a case; write batch,seq_len,"
                                  f"gc|nogc[,bf16], e.g. 4,2048,gc", config="GpuCheckConfig", field="qlora_cases",
                                  value=self.qlora_cases)

    def arch(self) -> Arch:
        from ..hardware import MODELS

        arch = MODELS[self.model]
        if self.toy_hidden:
            arch = replace(arch, hidden=self.toy_hidden, layers=2, heads=4, kv_heads=2,
                           intermediate=3 * self.toy_hidden, vocab=1024)
        return arch

    def hf_config(self):
        return self.arch().hf_config(max_positions=32768)


# ---- measuring on either device ----

def _fresh(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure_peak(device: torch.device, step: Callable[[], None]) -> dict[str, float]:
    """Run `step()` once; return its wall time and the peak bytes PyTorch's allocator handed out while it ran
    (everything live, the model included) and, on CUDA, the peak the caching allocator reserved."""
    _fresh(device)
    if device.type == "cuda":
        synchronize(device)
        t = time.perf_counter()
        step()
        synchronize(device)
        seconds = time.perf_counter() - t
        return {"seconds": seconds, "peak_allocated": torch.cuda.max_memory_allocated(device),
                "peak_reserved": torch.cuda.max_memory_reserved(device)}
    from ..memory import tensor_peak_bytes

    before = _live_cpu_bytes()
    t = time.perf_counter()
    growth = tensor_peak_bytes(step)
    return {"seconds": time.perf_counter() - t, "peak_allocated": before + growth, "peak_reserved": float("nan")}


def _live_cpu_bytes() -> int:
    """Bytes of every live CPU tensor storage (the CPU stand-in for `torch.cuda.memory_allocated`)."""
    seen: dict[int, int] = {}
    with warnings.catch_warnings():                # touching every object wakes deprecated module attributes
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            try:
                if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and not obj.is_meta:
                    storage = obj.untyped_storage()
                    seen[storage.data_ptr()] = storage.nbytes()
            except (RuntimeError, NotImplementedError, ReferenceError):
                continue
    return sum(seen.values())


def _allocated(device: torch.device) -> float:
    return float(torch.cuda.memory_allocated(device)) if device.type == "cuda" else float(_live_cpu_bytes())


def context_bytes(device: torch.device) -> float:
    """Memory the CUDA driver and libraries hold outside PyTorch's allocator: used − reserved (nan on a CPU)."""
    if device.type != "cuda":
        return float("nan")
    free, total = torch.cuda.mem_get_info(device)
    return float(total - free - torch.cuda.memory_reserved(device))


# ---- 1-3: the 7B-shaped model ----

def forward_seconds(model, vocab: int, seq_len: int, device: torch.device, seed: int) -> float:
    """Best of three no-grad forward passes of one random sequence, after a warm-up."""
    tokens = torch.randint(0, vocab, (1, seq_len), generator=torch.Generator().manual_seed(seed)).to(device)
    best = float("inf")
    with torch.no_grad():
        for i in range(4):
            synchronize(device)
            t = time.perf_counter()
            model(input_ids=tokens)
            synchronize(device)
            if i:
                best = min(best, time.perf_counter() - t)
    return best


def save_random_model(config: GpuCheckConfig, folder: Path, device: torch.device) -> float:
    """A random-weight model of the config's shape as a bf16 `save_pretrained` folder (built on `device` where it
    fits); returns its bf16 forward time at `compare_len` tokens (sdpa), the baseline of the 4-bit model's."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(config.seed)
    bf16_bytes = 2 * config.arch().n_params()
    # on a card too small for the bf16 model (a 16 GB one for 7B), build it in host memory: no bf16 timing then
    build_on = device if device.type != "cuda" or torch.cuda.mem_get_info(device)[0] > 1.3 * bf16_bytes \
        else torch.device("cpu")
    with torch.device(build_on):
        model = Qwen2ForCausalLM._from_config(config.hf_config(), dtype=torch.bfloat16, attn_implementation="sdpa")
    seconds = (forward_seconds(model, config.arch().vocab, config.compare_len, device, config.seed)
               if build_on == device else float("nan"))
    model.save_pretrained(folder, max_shard_size="4GB")
    del model
    _fresh(device)
    return seconds


def capture_rows(model, arch: Arch, lens: tuple[int, ...], device: torch.device, seed: int) -> list[dict]:
    """Peak memory and time of a full capture (patterns + residual stream kept on the device) and of a plain
    forward, at each length; the modelled bytes beside them."""
    from ..hardware import capture_bytes
    from ..interp.hf_hooks import run_with_cache

    def keep(name: str) -> bool:
        return name.endswith("attn.hook_pattern") or name.endswith("hook_resid_post") or name == "blocks.0.hook_resid_pre"

    rows = []
    g = torch.Generator().manual_seed(seed)
    for t in lens:
        tokens = torch.randint(0, arch.vocab, (1, t), generator=g).to(device)                   # (1, T)
        out: dict = {}

        def plain() -> None:
            with torch.no_grad():
                out["logits"] = model(input_ids=tokens).logits
            out.clear()

        def captured() -> None:
            out["logits"], out["cache"] = run_with_cache(model, tokens, names_filter=keep, device=device)
            out["bytes"] = sum(v.numel() * v.element_size() for v in out["cache"].values())
            out["n"] = len(out["cache"])
            del out["logits"], out["cache"]

        plain()                                   # warm-up: kernels chosen, workspaces allocated
        forward = min((measure_peak(device, plain) for _ in range(2)), key=lambda m: m["seconds"])
        capture = min((measure_peak(device, captured) for _ in range(2)), key=lambda m: m["seconds"])
        modelled = capture_bytes(arch, 1, t)
        rows.append({"seq_len": t, "cached_tensors": out["n"], "cache_bytes": out["bytes"],
                     "capture_peak": capture["peak_allocated"], "capture_reserved": capture["peak_reserved"],
                     "capture_s": capture["seconds"], "forward_peak": forward["peak_allocated"],
                     "forward_s": forward["seconds"], "model_bytes": sum(modelled.values()),
                     "model_weights": modelled["weights"],
                     "model_cache": modelled["attention patterns"] + modelled["residual stream"]})
    return rows


def qlora_rows(model, config: GpuCheckConfig, arch: Arch, device: torch.device) -> list[dict]:
    """QLoRA steps at each case: peak memory and time per step, the memory model and the modelled FLOPs beside."""
    from ..hardware import Compute, qlora_setup, step_flops
    from ..memory import ALL_LINEAR, lora_params
    from ..models.lab_lm import lm_loss
    from ..models.lora import add_lora

    peft_model = add_lora(model, config.rank, targets=ALL_LINEAR, gradient_checkpointing=False)
    peft_model.train()
    base = peft_model.base_model.model
    params = [p for p in peft_model.parameters() if p.requires_grad]
    resident = resident_model_bytes(peft_model)
    rows, g = [], torch.Generator().manual_seed(config.seed)
    for text in config.qlora_cases:
        b, t, gc_flag, *autocast = text.split(",")
        batch_size, seq_len, checkpointing = int(b), int(t), gc_flag == "gc"

        def cast() -> contextlib.AbstractContextManager:
            return torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

        with warnings.catch_warnings():   # transformers 5 renames these `activation_checkpointing_*`
            warnings.simplefilter("ignore", FutureWarning)
            if checkpointing:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                base.gradient_checkpointing_disable()
        setup = qlora_setup(config.rank, "4bit", checkpointing)
        batch = torch.randint(0, arch.vocab, (batch_size, seq_len + 1), generator=g).to(device)   # (B, T+1)
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        times: list[float] = []
        losses: list[float] = []

        def steps() -> None:
            for _ in range(config.qlora_steps):
                synchronize(device)
                t0 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                with cast():
                    loss = lm_loss(peft_model, batch)
                loss.backward()
                optimizer.step()
                synchronize(device)
                times.append(time.perf_counter() - t0)
                losses.append(float(loss.detach()))

        try:
            measured = measure_peak(device, steps)
            oom = False
        except torch.OutOfMemoryError:
            measured, oom = {"peak_allocated": float("nan"), "peak_reserved": float("nan")}, True
        modelled = peak_bytes(arch, setup, batch_size, seq_len)
        flops = step_flops(Compute.from_arch(arch), batch_size * seq_len, seq_len, full=False,
                           adapter_params=lora_params(arch, setup), recompute=checkpointing)
        timed = times[1:] or times
        rows.append({"case": text, "batch": batch_size, "seq_len": seq_len, "checkpointing": checkpointing,
                     "autocast_bf16": bool(autocast),
                     "oom": oom, "peak_allocated": measured["peak_allocated"],
                     "peak_reserved": measured["peak_reserved"], "model_peak": modelled["total"],
                     "model_weights": sum(weight_bytes(arch, setup).values()), "resident_model": resident,
                     "step_s": min(timed) if timed else float("nan"), "first_step_s": times[0] if times else float("nan"),
                     "flops": flops, "loss": losses[-1] if losses else float("nan")})
        del optimizer, batch
        peft_model.zero_grad(set_to_none=True)
        _fresh(device)
    return rows


# ---- why no-checkpointing peaks exceed the sdpa model: which attention kernel runs ----

def attention_kernel_rows(arch: Arch, seq_len: int, device: torch.device, seed: int) -> list[dict]:
    """For fp32 and bf16, grouped-query (`enable_gqa`, as transformers calls it without a mask) or K/V repeated
    to every query head, and each SDPA backend alone or PyTorch's own choice: does it run, and how many bytes
    does one causal attention of one layer (batch 1) keep for backward (every storage autograd saves, q, k
    and v included)?"""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..memory import saved_tensor_bytes

    backends = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    h, kv, d = arch.heads, arch.kv_heads, arch.head_dim
    g = torch.Generator().manual_seed(seed)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(1, h, seq_len, d, generator=g).to(device, dtype)                        # (1, H, T, D)
        k, v = (torch.randn(1, kv, seq_len, d, generator=g).to(device, dtype) for _ in range(2))  # (1, KV, T, D)
        for gqa in (True, False):
            kk, vv = (k, v) if gqa else (k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1))
            for name, backend in backends.items():
                qq = q.clone().requires_grad_(True)
                holder = torch.nn.Linear(1, 1)       # saved_tensor_bytes excludes a module's parameters: none here

                def step() -> torch.Tensor:
                    context = sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()
                    with context:
                        return F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=gqa).sum()

                try:
                    saved, _ = saved_tensor_bytes(holder, step)
                    error = ""
                except RuntimeError as exc:
                    saved, error = float("nan"), str(exc).strip().splitlines()[0][:160]
                rows.append({"dtype": str(dtype).removeprefix("torch."), "gqa": gqa, "backend": name,
                             "runs": not error, "saved_bytes": saved, "error": error,
                             "probabilities_bytes": h * seq_len ** 2 * (4 if dtype == torch.float32 else 2)})
    return rows


# ---- 4: the lab's small models ----

Build = Callable[[torch.Generator], object]          # a batch for one step, on the device
Loss = Callable[[object], torch.Tensor]


def tunnel_kind(name: str) -> str:
    """'bijection-transformer' from a wind-tunnel label ('bijection-transformer-s3') or a timed model's name
    ('wind_tunnels/bijection-transformer-s0'): the task × model whose shape a timing stands for."""
    return "-".join(name.rsplit("/", 1)[-1].split("-")[:2])


def tunnel_batch(config, g: torch.Generator, device: torch.device):
    """A wind-tunnel batch as its run builds one (on the CPU), moved to `device`."""
    from .wind_tunnels import make_batch

    batch = make_batch(config, config.batch_size, g)
    return type(batch)(*(x.to(device) for x in (batch.tokens, batch.positions, batch.posterior, batch.labels)))


def small_models(config: GpuCheckConfig, device: torch.device) -> Iterator[tuple[str, str, torch.nn.Module, Build, Loss]]:
    """(name, scale, model on `device`, batch builder, loss) for seed 0 of each wind-tunnel task × model at each
    of `small_scales`, then the lab LM's cpu config on random tokens."""
    from ..models.lab_lm import build_lab_lm, lm_loss
    from .lab_lm import LabLMConfig
    from .wind_tunnels import _configs, build_model, loss_on

    for scale in config.small_scales:
        for label, wt in _configs(scale).items():
            if label.endswith("-s0"):
                model = build_model(wt).to(device).train()
                yield (f"wind_tunnels/{label}", scale, model, lambda g, wt=wt: tunnel_batch(wt, g, device),
                       lambda batch, wt=wt, model=model: loss_on(wt, model, batch))
    lm = LabLMConfig()
    model = build_lab_lm(lm.hf_config(), lm.seed).to(device).train()
    yield ("lab_lm", "cpu", model,
           lambda g: torch.randint(0, lm.vocab_size, (lm.batch_size, lm.seq_len + 1), generator=g).to(device),
           lambda batch: lm_loss(model, batch))


def training_step(model: torch.nn.Module, loss: Loss) -> Callable[[object], None]:
    """One AdamW step of `model` on a batch, as the runs take it."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(batch).backward()
        optimizer.step()

    return step


def mean_seconds(fn: Callable[[], None], config: GpuCheckConfig, device: torch.device) -> float:
    """Mean seconds per call of `fn` over `small_steps` calls, after `small_warmup`, synchronised at both ends."""
    for _ in range(config.small_warmup):
        fn()
    synchronize(device)
    t = time.perf_counter()
    for _ in range(config.small_steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - t) / config.small_steps


def small_model_rows(config: GpuCheckConfig, device: torch.device) -> list[dict]:
    """Seconds per training step of the wind tunnels' shapes and of the lab LM, as their runs train them (a fresh
    batch each step)."""
    rows = []
    for name, scale, model, build, loss in small_models(config, device):
        step, g = training_step(model, loss), torch.Generator().manual_seed(config.seed)
        rows.append({"model": name, "scale": scale, "params": sum(p.numel() for p in model.parameters()),
                     "step_s": mean_seconds(lambda: step(build(g)), config, device)})
    return rows


def small_breakdown_rows(config: GpuCheckConfig, device: torch.device) -> list[dict]:
    """Where a small model's step goes, timed side by side in one process: building a batch on the CPU and
    moving it to the device; a step on one batch built beforehand (the model's own cost); and the whole step as
    the runs take it (a fresh batch each time)."""
    rows = []
    for name, scale, model, build, loss in small_models(config, device):
        step, g = training_step(model, loss), torch.Generator().manual_seed(config.seed)
        fixed = build(g)
        rows.append({"model": name, "scale": scale, "params": sum(p.numel() for p in model.parameters()),
                     "build_s": mean_seconds(lambda: build(g), config, device),
                     "fixed_step_s": mean_seconds(lambda: step(fixed), config, device),
                     "fresh_step_s": mean_seconds(lambda: step(build(g)), config, device)})
    return rows


def matmul_tflops(device: torch.device, n: int) -> float:
    """Achieved bf16 (CUDA) or fp32 (CPU) rate of an n×n×n matrix product, best of a few: the card's ceiling."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - t) / 5)
    return 2 * n ** 3 / best / 1e12


def lab_lm_quant_rows(config: GpuCheckConfig, folder: Path, device: torch.device) -> pd.DataFrame:
    """The qlora page's timing run (`qlora.interleaved_step_seconds`: its cpu config's rank, batch, length, blocks
    and steps; the smoke config's for a toy run) on a random-weight model of the lab LM's shape, on `device`:
    seconds per LoRA step on each base."""
    from ..finetune import load_base
    from ..models.lab_lm import build_lab_lm
    from ..models.lora import add_lora
    from .lab_lm import LabLMConfig
    from .qlora import QUANTS, interleaved_step_seconds
    from .registry import get_experiment

    timing = get_experiment("qlora").configs("smoke" if config.toy_hidden else "cpu")["timing"]
    lm = LabLMConfig()
    build_lab_lm(lm.hf_config(), lm.seed).save_pretrained(folder)
    models, optimizers = {}, {}
    for name in QUANTS:
        model, _ = load_base(str(folder), None if name == "fp32" else name)
        torch.manual_seed(timing.seed)
        model = add_lora(model, timing.rank)
        model.train()
        models[name] = model
        optimizers[name] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=timing.lr)
    g = torch.Generator().manual_seed(config.seed)
    batches = [torch.randint(0, lm.vocab_size, (timing.batch_size, timing.seq_len + 1), generator=g).to(device)
               for _ in range(timing.timing_steps)]                                        # (B, T+1) each
    return interleaved_step_seconds(models, optimizers, batches, timing.timing_blocks, device)


def compiled_step_rows(config: GpuCheckConfig, device: torch.device) -> list[dict]:
    """Seconds per step of the wind tunnels' bijection transformer (gpu shape; smoke shape for a toy run) on one
    batch built beforehand: eager, then `torch.compile` in each mode; the first step (which compiles) apart."""
    from .wind_tunnels import _configs, build_model, loss_on

    wt = _configs("smoke" if config.toy_hidden else "gpu")["bijection-transformer-s0"]
    batch = tunnel_batch(wt, torch.Generator().manual_seed(config.seed), device)
    rows = []
    for mode in ("eager", *config.compile_modes):
        model = build_model(wt).to(device).train()
        forward = model if mode == "eager" else torch.compile(model, mode=None if mode == "default" else mode)
        step = training_step(model, lambda b, forward=forward: loss_on(wt, forward, b))
        synchronize(device)
        t = time.perf_counter()
        try:
            step(batch)
            error = ""
        except Exception as exc:                 # a mode that fails to compile is a finding, not a crash
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
        synchronize(device)
        first = time.perf_counter() - t
        seconds = float("nan") if error else mean_seconds(lambda: step(batch), config, device)
        rows.append({"model": "wind_tunnels/bijection-transformer-s0", "mode": mode, "first_step_s": first,
                     "step_s": seconds, "error": error})
    return rows


# ---- the run ----

def exact_integers(frame: pd.DataFrame) -> pd.DataFrame:
    """Float columns holding only whole numbers (bytes, counts; NaN where a kernel refused) as nullable integers:
    the store writes floats to 6 significant digits, which would round byte counts of 10⁸ by tens of bytes."""
    out = frame.copy()
    for name in out.columns:
        column = out[name]
        if pd.api.types.is_float_dtype(column) and column.notna().any() and (column.dropna() % 1 == 0).all() \
                and column.dropna().abs().max() >= 1e6:
            out[name] = column.astype("Int64")
    return out


def run(config: GpuCheckConfig, ctx: RunContext) -> RunResult:
    from ..models.lm import load_lm
    from ..provenance import device_description

    def log(stage: str) -> None:            # a GPU lease is short: say where the run is, in the terminal
        if ctx.progress:
            print(f"[gpu_check {time.strftime('%H:%M:%S')}] {stage}", file=sys.stderr, flush=True)

    device = lab_device()
    if device.type != "cuda" and not config.toy_hidden:
        raise ConfigError(f"gpu_check at the {config.model} shape needs a CUDA device, and this run's device is "
                          f"{device}; run it on a GPU machine (the smoke scale runs on the CPU)",
                          config="GpuCheckConfig", field="model", value=config.model)
    arch = config.arch()
    one_table = {   # part: (table, what it measures) for the parts that are one measurement each
        "attention-kernels": ("kernels", lambda: attention_kernel_rows(arch, config.compare_len, device, config.seed)),
        "compiled-steps": ("compiled_steps", lambda: compiled_step_rows(config, device)),
        "lab-lm-quant": ("lab_lm_quant", lambda: lab_lm_quant_rows(config, ctx.work_dir / "lab-lm", device)),
        "small-steps": ("small_breakdown", lambda: small_breakdown_rows(config, device)),
    }
    if config.part in one_table:
        name, measure = one_table[config.part]
        log(config.part)
        frame = measure()
        return RunResult(tables={name: exact_integers(pd.DataFrame(frame))},
                         summary={"device": device_description(device)}, seed=config.seed)
    summary: dict = {"device": device_description(device),
                     "model_shape": f"toy (hidden {config.toy_hidden})" if config.toy_hidden else config.model,
                     "params": arch.n_params()}
    if device.type == "cuda":
        torch.ones(1, device=device)                       # create the context before measuring it
        summary["context_bytes"] = context_bytes(device)
        summary["card_bytes"] = float(torch.cuda.mem_get_info(device)[1])
    summary["matmul_tflops"] = matmul_tflops(device, 8192 if device.type == "cuda" else 256)
    log("small models")
    small = pd.DataFrame(small_model_rows(config, device))
    _fresh(device)

    log("random weights: build, time, save")
    folder = ctx.work_dir / "random-weights"
    t = time.perf_counter()
    summary["forward_bf16_s"] = save_random_model(config, folder, device)
    summary["save_s"] = time.perf_counter() - t
    t = time.perf_counter()
    log("load in 4 bits")
    model, _ = load_lm(str(folder), "4bit", dtype=torch.bfloat16,
                       device_map={"": device.index or 0} if device.type == "cuda" else None)
    summary["load_4bit_s"] = time.perf_counter() - t
    summary["resident_4bit_bytes"] = resident_model_bytes(model)
    summary["allocated_after_load"] = _allocated(device)
    summary["model_4bit_bytes"] = sum(weight_bytes(arch, Setup(quant="4bit", rank=0, param_bytes=2)).values())
    if device.type == "cuda":
        summary["context_after_load_bytes"] = context_bytes(device)
    log("captures")
    captures = pd.DataFrame(capture_rows(model, arch, config.capture_lens, device, config.seed))
    model.set_attn_implementation("sdpa")                    # the memory model's QLoRA recipe
    summary["forward_4bit_s"] = forward_seconds(model, arch.vocab, config.compare_len, device, config.seed)
    log("QLoRA cases")
    qlora = pd.DataFrame(qlora_rows(model, config, arch, device))
    if device.type == "cuda":
        summary["context_end_bytes"] = context_bytes(device)
    del model
    shutil.rmtree(folder, ignore_errors=True)                # gigabytes of random weights: never stored
    return RunResult(tables={name: exact_integers(t) for name, t in
                             (("captures", captures), ("qlora", qlora), ("small_models", small)) if len(t)},
                     summary=summary,
                     seed=config.seed)


SMOKE = GpuCheckConfig(toy_hidden=64, compile_modes=(), rank=4, capture_lens=(16, 32), qlora_cases=("2,32,gc", "2,32,nogc", "2,32,gc,bf16"),
                       compare_len=32,
                       qlora_steps=2, small_scales=("smoke",), small_steps=3, small_warmup=1)

register(Experiment(
    name="gpu_check",
    title="Measured on a GPU: 7B QLoRA memory and speed, a 7B capture, the small models' steps",
    track="The lab itself",
    page="experiments/gpu-check.qmd",
    version=1,
    config_type=GpuCheckConfig,
    scales={"smoke": {"check": SMOKE, "kernels": replace(SMOKE, part="attention-kernels"),
                      "small-steps": replace(SMOKE, part="small-steps"),
                      "lab-lm-quant": replace(SMOKE, part="lab-lm-quant"),
                      "compiled-steps": replace(SMOKE, part="compiled-steps")},
            "gpu": {"qwen7b-shape": GpuCheckConfig(), "attention-kernels": GpuCheckConfig(part="attention-kernels"),
                    # a third run: bf16 autocast without checkpointing (fused attention, half-width activations),
                    # with the fp32 1 × 2048 case again as this run's own reference
                    "bf16-no-checkpointing": GpuCheckConfig(capture_lens=(), small_scales=(), qlora_cases=(
                        "1,1024,nogc,bf16", "1,2048,nogc,bf16", "2,2048,nogc,bf16", "1,2048,nogc")),
                    "small-steps": GpuCheckConfig(part="small-steps"),
                    "lab-lm-quant": GpuCheckConfig(part="lab-lm-quant"),
                    "compiled-steps": GpuCheckConfig(part="compiled-steps")}},
    run=run,
    description="A random-weight Qwen2.5-7B in 4 bits on CUDA: resident bytes, capture and QLoRA peaks against "
                "labpy.memory, step times against modelled FLOPs; the small models' per-step floor.",
))
