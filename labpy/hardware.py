"""The hardware decision: FLOPs of the lab's runs, quoted GPU specs, and what each card's memory fits.

Why a module: the question "should I buy a bigger GPU?" (`hardware-decision`) is answered from three kinds of
numbers that must never be confused, so each function here returns one kind and the page labels it:

- *measured*: wall times in the run store's provenance, step rates of the benchmark entries, and this CPU's
  matmul rate, timed live by `cpu_matmul_rates`;
- *modelled*: FLOPs of a run from its config (`step_flops`, `model_entry`), memory from `labpy.memory` (never
  re-derived here), and GPU times = FLOPs / (quoted peak × an assumed efficiency), floored by a per-step cost;
- *quoted*: the GPUs' memory and peak dense BF16 rates (`CARDS`), and the Qwen2.5 / SmolLM2 shapes (`MODELS`),
  copied from vendor spec sheets and the models' `config.json`.

FLOPs per token follow Kaplan et al. (2020): a forward pass costs 2 FLOPs per weight in a matrix multiply
(embedding lookups are free; the unembedding is a matmul) plus attention's 4·L·T·(h·d_head) (scores and the
weighted sum, computed over the whole T×T square as the lab's eager and sdpa CPU kernels do). Backward costs
twice the forward when every weight trains (input and weight gradients) — the familiar 6·N·tokens — but only
once the forward for frozen weights (input gradients only): a LoRA step costs about 4·N·tokens, plus a second
forward (6·N) under gradient checkpointing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import pandas as pd
import torch

from .errors import ConfigError, UnknownChoiceError
from .memory import ALL_LINEAR, GIB, QWEN25_7B, Arch, Setup, lora_params, peak_bytes, weight_bytes

# ---- quoted: GPUs and model shapes ----


@dataclass(frozen=True)
class Card:
    """A GPU as its spec sheet states it (quoted): memory, dense BF16 tensor rate with FP32 accumulation (what
    a bf16 training matmul gets; sparsity figures halved away), memory bandwidth."""

    name: str
    memory_gib: float
    bf16_tflops: float
    bandwidth_gbs: float
    source: str


CARDS: dict[str, Card] = {c.name: c for c in (
    Card("RTX 5060 Ti 16GB", 16, 47.4, 448,
         "NVIDIA RTX 5060 Ti spec page: 759 AI TOPS (FP4, sparse) ÷ 16 = dense BF16 with FP32 accumulate, the "
         "GeForce ratio of NVIDIA's RTX Blackwell whitepaper (the user's card)"),
    Card("RTX 3090", 24, 71.0, 936, "NVIDIA Ampere GA102 whitepaper: 71 TFLOPS FP16/BF16, FP32 accumulate, dense"),
    Card("RTX 4090", 24, 165.2, 1008,
         "NVIDIA Ada Lovelace whitepaper: 165.2 TFLOPS FP16/BF16, FP32 accumulate, dense"),
    Card("RTX 5090", 32, 209.5, 1792,
         "NVIDIA RTX Blackwell whitepaper: 209.5 TFLOPS FP16/BF16, FP32 accumulate, dense"),
    Card("RTX 6000 Ada", 48, 364.2, 960, "NVIDIA Ada Lovelace whitepaper / RTX 6000 Ada datasheet: 364.2 TFLOPS dense"),
    Card("A100 80GB", 80, 312.0, 2039, "NVIDIA A100 datasheet (SXM): 312 TFLOPS BF16 dense"),
    Card("H100 80GB", 80, 989.0, 3350, "NVIDIA H100 datasheet (SXM): 989 TFLOPS BF16 dense (1,979 with sparsity)"),
)}
USERS_CARD = "RTX 5060 Ti 16GB"

# Shapes from each model's config.json (quoted). SmolLM2 is Llama-shaped: no q/k/v biases, tied embeddings.
MODELS: dict[str, Arch] = {
    "SmolLM2-135M": Arch(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, vocab=49152,
                         tie_embeddings=True, qkv_bias=False),
    "Qwen2.5-0.5B": Arch(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936,
                         tie_embeddings=True),
    "Qwen2.5-1.5B": Arch(hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960, vocab=151936,
                         tie_embeddings=True),
    "Qwen2.5-3B": Arch(hidden=2048, layers=36, heads=16, kv_heads=2, intermediate=11008, vocab=151936,
                       tie_embeddings=True),
    "Qwen2.5-7B": QWEN25_7B,
    "Qwen2.5-14B": Arch(hidden=5120, layers=48, heads=40, kv_heads=8, intermediate=13824, vocab=152064),
}

# ---- modelled: assumptions, stated once ----

MFU = 0.30            # fraction of a card's quoted peak a training step reaches (30-40% is good for large models)
STEP_LAUNCHES = 1000  # kernel launches per optimizer step of a small model in eager PyTorch (order of magnitude)
LAUNCH_S = 5e-6       # host time per kernel launch in eager PyTorch (order of magnitude; a constant, so that GPU
                      # estimates do not move with the load of the machine that renders the page)
STEP_FLOOR_S = STEP_LAUNCHES * LAUNCH_S     # no step of any model is shorter than its launches
RESERVE_GIB = 1.5     # CUDA context and allocator slack, as on the memory-model page (`MemoryModelConfig`)


# ---- FLOPs ----

@dataclass(frozen=True)
class Compute:
    """What one token costs a model: the weights it multiplies and attention's length-dependent part.

    `matmul_params`: weights in matrix multiplies per token (linear layers and the unembedding; embedding
    lookups are free). `layers` × `attn_width` (heads × head_dim of the queries) sets attention's cost.
    """

    matmul_params: int
    layers: int = 0
    attn_width: int = 0

    @classmethod
    def from_arch(cls, arch: Arch) -> Compute:
        return cls(arch.linear_params() + arch.vocab * arch.hidden, arch.layers, arch.heads * arch.head_dim)

    def forward_flops(self, tokens: int, seq_len: int) -> float:
        """2 FLOPs per weight per token, plus QKᵀ and AV: 2·T·width each per token per layer."""
        return 2.0 * self.matmul_params * tokens + 4.0 * self.layers * seq_len * self.attn_width * tokens


def step_flops(compute: Compute, tokens: int, seq_len: int, *, full: bool = True, adapter_params: int = 0,
               recompute: bool = False) -> float:
    """FLOPs of one training step over `tokens` tokens in sequences of `seq_len`.

    full: every weight trains, backward = 2 × forward (6·N·tokens). LoRA (`full=False`): frozen weights need only
    input gradients (backward of the dense part = 1 × forward, 4·N·tokens in all); attention's backward is
    still 2 × its forward; the adapters (`adapter_params`) cost 6 per weight per token. `recompute`: gradient
    checkpointing runs the forward twice.
    """
    dense = 2.0 * compute.matmul_params * tokens
    attention = 4.0 * compute.layers * seq_len * compute.attn_width * tokens
    adapters = 2.0 * adapter_params * tokens
    forward = dense + attention + adapters
    backward = (2 * dense if full else dense) + 2 * attention + 2 * adapters
    return forward + backward + (forward if recompute else 0.0)


# ---- modelled: the lab's stored runs ----

@dataclass(frozen=True)
class Workload:
    """The modelled compute of one stored run: FLOPs over `steps` optimizer steps (or forward calls)."""

    experiment: str
    label: str
    model: str            # what was trained or read, in words
    kind: str             # "training", "LoRA" or "forward"
    steps: int
    tokens: int           # tokens (or MLP rows) processed per pass, summed over the run
    flops: float
    memory_bytes: float   # modelled peak on a GPU (labpy.memory), for the run's own batch and length
    note: str = ""


def arch_from_hf(config: Mapping[str, Any]) -> Arch:
    """An `Arch` from a stored HF Qwen2 config dict (the lab LM's `hf_config`), without importing transformers."""
    return Arch(hidden=config["hidden_size"], layers=config["num_hidden_layers"], heads=config["num_attention_heads"],
                kv_heads=config["num_key_value_heads"], intermediate=config["intermediate_size"],
                vocab=config["vocab_size"], tie_embeddings=bool(config.get("tie_word_embeddings", False)))


def _toy_arch(d_model: int, layers: int, heads: int, d_mlp: int, vocab: int) -> Arch:
    """A Qwen2-shaped stand-in for a toy GPT with the same matmul weights (a GELU MLP's 2·d·d_mlp written as a
    gated MLP's 3·d·f with f = 2·d_mlp/3), so `labpy.memory` can size it; exact to within norms and biases."""
    return Arch(hidden=d_model, layers=layers, heads=heads, kv_heads=heads, intermediate=2 * d_mlp // 3,
                vocab=vocab, qkv_bias=False)


def _training_memory(arch: Arch, batch: int, seq_len: int, rank: int = 0, quant: str | None = None,
                     targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")) -> float:
    setup = Setup(quant=quant, rank=rank, targets=targets)        # the lab's fp32 path, no checkpointing
    return float(peak_bytes(arch, setup, batch, seq_len)["total"])


def _lab_lm(entry, bases):
    c, arch = entry.config, arch_from_hf(entry.summary["hf_config"])
    tokens = c.steps * c.batch_size * c.seq_len
    return Workload("lab_lm", entry.label, "lab LM (Qwen2, 1.1 M parameters)", "training", c.steps, tokens,
                    step_flops(Compute.from_arch(arch), tokens, c.seq_len),
                    _training_memory(arch, c.batch_size, c.seq_len), "evaluations not counted")


def _attention_formation(entry, bases):
    """The lab LM's training, replayed (its head scoring at ~40 steps is a few forward passes: not counted)."""
    c, arch = SimpleNamespace(**entry.summary["lab_lm_config"]), arch_from_hf(entry.summary["hf_config"])
    tokens = c.steps * c.batch_size * c.seq_len
    return Workload("attention_formation", entry.label, "lab LM (Qwen2, 1.1 M parameters)", "training", c.steps,
                    tokens, step_flops(Compute.from_arch(arch), tokens, c.seq_len),
                    _training_memory(arch, c.batch_size, c.seq_len), "head scoring not counted")


def _lr_sweep(entry, bases):
    c = entry.config
    arch = Arch(hidden=c.hidden_size, layers=c.n_layers, heads=c.n_heads, kv_heads=c.n_kv_heads,
                intermediate=c.intermediate_size, vocab=c.vocab_size, tie_embeddings=True)
    steps = len(c.seeds) * c.steps
    tokens = steps * c.batch_size * c.seq_len
    return Workload("lr_sweep", entry.label, "small lab LM from scratch", "training", steps, tokens,
                    step_flops(Compute.from_arch(arch), tokens, c.seq_len),
                    _training_memory(arch, c.batch_size, c.seq_len), "configured steps (a diverged run may stop early)")


def _finetune(entry, bases):
    """lora_rank, forgetting, qlora and batch_lr: LoRA (or full, rank 0) fine-tuning of the lab LM."""
    c, name = entry.config, entry.experiment
    if getattr(c, "quant", None) == "all" or getattr(c, "kind", "grid") == "noise":
        return None                                   # a timing benchmark / per-example gradients: not modelled
    arch = bases[c.base.split(":")[0]]
    rank = c.rank
    targets = tuple(getattr(c, "targets", ("q_proj", "k_proj", "v_proj", "o_proj")))
    if name == "batch_lr":
        steps = len(c.lrs) * len(c.seeds) * max(1, c.examples // c.batch_size)
    else:
        steps = c.steps
    tokens = steps * c.batch_size * c.seq_len
    setup = Setup(rank=rank, targets=targets)
    quant = {"fp32": None}.get(getattr(c, "quant", "fp32"), getattr(c, "quant", None))
    flops = step_flops(Compute.from_arch(arch), tokens, c.seq_len, full=rank == 0,
                       adapter_params=lora_params(arch, setup))
    return Workload(name, entry.label, "lab LM, " + ("full fine-tuning" if rank == 0 else f"LoRA r={rank}"),
                    "training" if rank == 0 else "LoRA", steps, tokens, flops,
                    _training_memory(arch, c.batch_size, c.seq_len, rank, quant, targets), "evaluations not counted")


def induction_compute(c) -> Compute:
    """The attention-only toy of the induction experiment: Q, K, V, O per layer and the unembedding."""
    width = c.n_heads * c.d_head
    return Compute(c.n_layers * 4 * c.d_model * width + c.d_model * c.vocab, c.n_layers, width)


def _induction(entry, bases):
    c = entry.config
    compute = induction_compute(c)
    tokens = c.steps * c.batch_size * c.seq_len
    arch = Arch(hidden=c.d_model, layers=c.n_layers, heads=c.n_heads, kv_heads=c.n_heads, intermediate=0,
                vocab=c.vocab, qkv_bias=False)
    return Workload(entry.experiment, entry.label, f"{c.n_layers}-layer attention-only toy", "training", c.steps,
                    tokens, step_flops(compute, tokens, c.seq_len), _training_memory(arch, c.batch_size, c.seq_len),
                    "evaluations and head scores not counted" + ("; dropout masks not counted"
                                                                 if getattr(c, "dropout", 0) else ""))


@lru_cache(maxsize=None)
def _mlp_matmul_params(config) -> int:
    """Weights in the context MLP's matmuls (stem, blocks, head); its embedding is a lookup."""
    m = config.mlp_config()
    return m.context * m.d_embed * m.width + m.depth * m.width * m.width + m.width * m.n_out


def wind_tunnel_workload(config, label: str = "") -> Workload:
    """One wind-tunnel run (any scale): the toy transformer over whole sequences, or the context MLP over one
    padded prefix per prediction (rows = sequences × predictions)."""
    from .tasks import bijection, hmm

    if config.task == "bijection":
        seq_len, predictions = config.n_ctx, bijection.BijectionTask(config.vocab).n_pairs
    else:
        seq_len, predictions = hmm.header_length(config.hmm_task()) + config.hmm_length, config.hmm_length
    arch = _toy_arch(config.d_model, config.n_layers, config.n_heads, config.d_mlp, max(config.n_in, config.n_out))
    memory = _training_memory(arch, config.batch_size, seq_len)
    if config.model == "transformer":
        compute = Compute(config.n_layers * (4 * config.d_model ** 2 + 2 * config.d_model * config.d_mlp)
                          + config.d_model * config.n_out, config.n_layers, config.d_model)
        tokens = config.steps * config.batch_size * seq_len
        return Workload("wind_tunnels", label, f"{config.n_layers}-layer toy transformer", "training", config.steps,
                        tokens, step_flops(compute, tokens, seq_len), memory)

    rows = config.steps * config.batch_size * predictions
    compute = Compute(_mlp_matmul_params(replace(config, seed=0, n_checkpoints=0)))
    return Workload("wind_tunnels", label, "capacity-matched MLP", "training", config.steps, rows,
                    step_flops(compute, rows, 1), memory, "memory: its transformer twin's (equal parameters)")


def _wind_tunnels(entry, bases):
    return replace(wind_tunnel_workload(entry.config, entry.label), experiment=entry.experiment)


def _attention_atlas(entry, bases):
    c = entry.config
    arch = bases[c.model.split(":")[0]]
    passes = 3                                    # prose, code, repeated random: one batch each
    tokens = passes * c.n_windows * c.seq_len + 2 * c.explorer_len
    return Workload("attention_atlas", entry.label, c.model.split(":")[0], "forward", passes + 2, tokens,
                    Compute.from_arch(arch).forward_flops(tokens, c.seq_len),
                    float(sum(capture_bytes(arch, c.n_windows, c.seq_len, None, act_bytes=4, param_bytes=4).values())),
                    "model loading and scoring not counted")


MODELLERS: dict[str, Callable[[Any, Mapping[str, Arch]], Workload | None]] = {
    "lab_lm": _lab_lm, "lr_sweep": _lr_sweep, "lora_rank": _finetune, "forgetting": _finetune, "qlora": _finetune,
    "batch_lr": _finetune, "induction": _induction, "wind_tunnels": _wind_tunnels,
    "attention_depth": _induction, "two_hop": _induction, "three_hop": _induction,
    "wind_tunnel_targets": _wind_tunnels,
    "attention_atlas": _attention_atlas, "attention_formation": _attention_formation,
}

# Why the rest are left out of the FLOP model (their wall time is still listed).
LEFT_OUT: dict[str, str] = {
    "activation_patching": "hundreds of patched forward passes whose number depends on the sweep, not the config",
    "component_patching": "patched forward passes only where the clean and corrupted runs differ: a result, not "
                          "a config",
    "residual_stream": "per-component ablations and writes; the forward count depends on the analysis",
    "ffn_neurons": "a few forward passes and knockout reruns; the time goes to scikit-learn probes",
    "tuned_lens": "the time goes to the unembedding of captured streams (KL to the final distribution), not to "
                  "forward passes of the model",
    "probes": "the time goes to fitting scikit-learn probes with control tasks, not to the model",
    "finetune_heads": "reads stored adapters and scores heads: analysis, no training",
    "grokking": "full-batch training that stops early: the step count is a result, not a config",
    "grokking_seeds": "the same training as grokking (more seeds): the step count is a result, not a config",
    "mlp_neurons": "tiny MLPs on digits and XOR (kFLOPs per step): nothing a GPU would change",
    "superposition": "tiny ReLU toy models (20 → 5 units): per-step overhead, not FLOPs",
    "memory_model": "memory measurements under the profiler, which dominates the time",
    "benchmarks": "a benchmark (its step rates are used directly below)",
    "finetune_benchmark": "a benchmark (its step rates are used directly below)",
    "interp_benchmark": "a benchmark (its forward times are used directly below)",
    "toy_transformer": "a benchmark, and retrainings of stored induction and wind-tunnel runs (modelled there)",
    "site_render": "renders the website: Quarto and Pandoc, not tensors",
    "gpu_check": "made on a GPU to check these models: its page compares each number with the model it checks",
    "lr_sweep_corpus": "trains a tokenizer",
}


# Configs of modelled experiments that are themselves left out, by "experiment/label".
LEFT_OUT_CONFIGS: dict[str, str] = {
    "batch_lr/noise": "per-example gradients for the noise scale, not training steps",
    "qlora/timing": "a benchmark (its step rates are used directly below)",
}


def left_out_reason(experiment: str, label: str) -> str:
    """Why a stored run has no FLOP model: its config's reason, else its experiment's."""
    return LEFT_OUT_CONFIGS.get(f"{experiment}/{label}") or LEFT_OUT.get(experiment, "no FLOP model written yet")


def model_entry(entry, bases: Mapping[str, Arch]) -> Workload | None:
    """The modelled FLOPs of a stored run, or None where the model leaves it out (`LEFT_OUT` says why)."""
    modeller = MODELLERS.get(entry.experiment)
    return modeller(entry, bases) if modeller else None


def benchmark_steps(lab_lm: Arch, induction_config, benchmarks, finetune_benchmark, qlora_timing,
                    interp_benchmark) -> pd.DataFrame:
    """One row per step the lab's benchmark entries time on their own (no evaluation, no loading): measured
    seconds per step and modelled FLOPs per step, hence the achieved FLOP/s of a bare step."""
    lab_compute = Compute.from_arch(lab_lm)
    rows = []

    def add(name: str, kind: str, tokens: int, flops: float, seconds: float) -> None:
        rows.append({"step": name, "kind": kind, "tokens": tokens, "flops": flops, "seconds": seconds})

    c = induction_config
    tokens = c.batch_size * c.seq_len
    add(f"induction toy, training step ({c.batch_size} × {c.seq_len})", "training", tokens,
        step_flops(induction_compute(c), tokens, c.seq_len), 1 / benchmarks.summary["lab_steps_per_s"])
    for entry, times in ((finetune_benchmark, {"fp32": 1 / finetune_benchmark.summary["labpy_steps_per_s"]}),
                         (qlora_timing, {q: qlora_timing.summary[f"ms_per_step_{q}"] / 1000
                                         for q in ("fp32", "8bit", "4bit")})):
        c = entry.config
        tokens = c.batch_size * c.seq_len
        flops = step_flops(lab_compute, tokens, c.seq_len, full=False,
                           adapter_params=lora_params(lab_lm, Setup(rank=c.rank)))
        for quant, seconds in times.items():
            where = "labpy vs HF benchmark" if entry is finetune_benchmark else f"{quant} base, QLoRA timing"
            add(f"lab LM, LoRA r={c.rank} step ({c.batch_size} × {c.seq_len}; {where})", "LoRA", tokens, flops,
                seconds)
    c = interp_benchmark.config
    tokens = c.batch * c.seq_len
    for key, name, arch in (("smollm2-135m", "SmolLM2-135M", MODELS["SmolLM2-135M"]), ("lab-lm", "lab LM", lab_lm)):
        add(f"{name} forward ({c.batch} × {c.seq_len})", "forward", tokens,
            Compute.from_arch(arch).forward_flops(tokens, c.seq_len),
            interp_benchmark.summary[f"{key} plain HF forward"])
    frame = pd.DataFrame(rows)
    frame["gflops"] = frame.flops / frame.seconds / 1e9
    return frame


# ---- measured: this CPU ----

def cpu_matmul_rates(sizes: Iterable[int] = (256, 512, 1024), seconds: float = 1.5) -> pd.DataFrame:
    """FLOP/s of square fp32 matmuls on this CPU with the current torch threads, best of repeated timings.

    Best, not mean: the machine is shared, and the question is what the hardware can do when a step gets it.
    `seconds` is split evenly between the sizes."""
    rows, sizes = [], list(sizes)
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b                                                     # warm-up (allocation, thread pool)
        reps = max(1, int(5e7 / (2 * n ** 3)))                    # ~50 MFLOP per timing: ≳ 1 ms each
        best, start = 0.0, time.perf_counter()
        while time.perf_counter() - start < seconds / len(sizes):
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t))
        rows.append({"size": n, "gflops": best / 1e9})
    return pd.DataFrame(rows)


def op_overhead_s(repeats: int = 20000) -> float:
    """Seconds per tiny tensor op (a 64-element add): what the framework costs per call, whatever the math."""
    a, b = torch.ones(64), torch.ones(64)
    for _ in range(200):
        a + b
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats // 3):
            a + b
        best = min(best, (time.perf_counter() - t) / (repeats // 3))
    return best


# ---- modelled: GPU time ----

def gpu_seconds(flops: float, steps: int, card: Card, mfu: float = MFU, step_floor_s: float = STEP_FLOOR_S) -> float:
    """FLOPs at `mfu` of the card's quoted peak, but never below `steps` × `step_floor_s` (kernel launches)."""
    return max(flops / (card.bf16_tflops * 1e12 * mfu), steps * step_floor_s)


# ---- modelled: memory (through labpy.memory) ----

def capture_bytes(arch: Arch, batch: int, seq_len: int, quant: str | None = "4bit", act_bytes: int = 2,
                  param_bytes: int = 2) -> dict[str, int]:
    """A forward pass that keeps every attention pattern and the residual stream after every layer.

    weights (`labpy.memory.weight_bytes`, non-quantized parts at `param_bytes`: bf16 on a GPU, no upcast), patterns
    L·h·T²·B, residuals (L+1)·B·T·d, both at `act_bytes`; plus the largest transient: the fp32 logits B·T·V or
    one layer's fp32 attention scores with its MLP's three f-wide activations, whichever is larger.
    """
    weights = sum(weight_bytes(arch, Setup(quant=quant, rank=0, param_bytes=param_bytes)).values())
    patterns = arch.layers * arch.heads * seq_len ** 2 * batch * act_bytes
    residuals = (arch.layers + 1) * batch * seq_len * arch.hidden * act_bytes
    transient = max(batch * seq_len * arch.vocab * 4,
                    batch * arch.heads * seq_len ** 2 * 4 + 3 * batch * seq_len * arch.intermediate * act_bytes)
    return {"weights": int(weights), "attention patterns": patterns, "residual stream": residuals,
            "largest transient": transient}


def longest_capture(arch: Arch, capacity_gib: float, reserve_gib: float = RESERVE_GIB, quant: str | None = "4bit",
                    batch: int = 1, step: int = 256, limit: int = 65536) -> int:
    """The longest sequence (a multiple of `step`, at most `limit`) whose full capture fits; 0 if none does."""
    budget, best = (capacity_gib - reserve_gib) * GIB, 0
    for t in range(step, limit + 1, step):
        if sum(capture_bytes(arch, batch, t, quant).values()) > budget:
            break
        best = t
    return best


def qlora_setup(rank: int, quant: str | None = "4bit", checkpointing: bool = True) -> Setup:
    """The recipe of the memory-model page's 7B extrapolation (`memory_model.qwen7b_setups`): adapters on every
    linear layer, fp32 upcast of the rest, bf16 compute; rank 0 is full fine-tuning of every weight."""
    return Setup(quant=quant, rank=rank, targets=ALL_LINEAR, attn="sdpa", param_bytes=4, act_bytes=4,
                 compute_bytes=2 if quant == "4bit" else 4, grad_checkpointing=checkpointing)


# ---- the calculator ----

@dataclass
class StepEstimate:
    """One training step on one card: memory (modelled by labpy.memory), FLOPs and time (modelled)."""

    model: str
    card: Card
    batch: int
    seq_len: int
    parts: dict[str, int]
    usable_gib: float
    flops: float
    seconds: float
    mfu: float
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_gib(self) -> float:
        return self.parts["total"] / GIB

    @property
    def fits(self) -> bool:
        return self.peak_gib <= self.usable_gib

    def frame(self) -> pd.DataFrame:
        rows = [("peak memory of a step (GiB)", f"{self.peak_gib:.2f}", "modelled (labpy.memory)"),
                (f"usable on {self.card.name} (GiB)", f"{self.usable_gib:.1f}",
                 f"quoted {self.card.memory_gib:g} GiB − modelled reserve"),
                ("fits", "yes" if self.fits else "no", "modelled"),
                ("FLOPs per step", f"{self.flops:.3g}", "modelled"),
                (f"time per step at {self.mfu:.0%} of {self.card.bf16_tflops:g} TFLOPS (s)", f"{self.seconds:.3g}",
                 "modelled from a quoted peak"),
                ("tokens per second", f"{self.batch * self.seq_len / self.seconds:,.0f}", "modelled")]
        return pd.DataFrame(rows, columns=["quantity", "value", "kind"])


def _bad(field_name: str, value: Any, fix: str) -> ConfigError:
    return ConfigError(f"calculator input {field_name} = {value!r} is out of range; {fix}", config="calculator",
                       field=field_name, value=value)


def estimate_step(model: str | Arch, quant: str | None, rank: int, batch: int, seq_len: int, card: str,
                  checkpointing: bool = True, mfu: float = MFU, reserve_gib: float = RESERVE_GIB) -> StepEstimate:
    """Memory and time of one fine-tuning step: `labpy.memory.peak_bytes` for the memory (the same recipe as
    the memory-model page), `step_flops` at `mfu` of the card's quoted peak for the time.

    Every bad input raises one `ConfigError` (or `UnknownChoiceError`) line naming the value and the fix.
    """
    if isinstance(model, str):
        if model not in MODELS:
            raise UnknownChoiceError("model", model, MODELS, "(or pass a labpy.memory.Arch)")
        arch, name = MODELS[model], model
    elif isinstance(model, Arch):
        arch, name = model, f"Arch(hidden={model.hidden}, layers={model.layers})"
    else:
        raise _bad("MODEL", model, f"use a name from {', '.join(MODELS)} or a labpy.memory.Arch(...)")
    if card not in CARDS:
        raise UnknownChoiceError("card", card, CARDS)
    for field_name, value, low in (("BATCH", batch, 1), ("SEQ_LEN", seq_len, 1), ("RANK", rank, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _bad(field_name, value, f"it must be a whole number >= {low}"
                       + (" (0 = full fine-tuning)" if field_name == "RANK" else ""))
    if not (isinstance(mfu, (int, float)) and 0 < mfu <= 1):
        raise _bad("MFU", mfu, "it is a fraction of the card's peak: a number in (0, 1], e.g. 0.3")
    if rank == 0 and quant is not None:
        raise _bad("QUANT", quant, "full fine-tuning (RANK = 0) trains every weight, which a quantized base cannot; "
                                   "set QUANT = None or RANK >= 1")
    setup = qlora_setup(rank, quant, checkpointing)          # raises UnknownChoiceError for a bad quant
    gpu = CARDS[card]
    parts = peak_bytes(arch, setup, batch, seq_len)
    tokens = batch * seq_len
    flops = step_flops(Compute.from_arch(arch), tokens, seq_len, full=rank == 0,
                       adapter_params=lora_params(arch, setup), recompute=checkpointing)
    return StepEstimate(name, gpu, batch, seq_len, parts, gpu.memory_gib - reserve_gib, flops,
                        gpu_seconds(flops, 1, gpu, mfu), mfu,
                        {"quant": quant, "rank": rank, "checkpointing": checkpointing})
