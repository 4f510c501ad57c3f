"""A model of fine-tuning memory: parameters, quantization constants, gradients, Adam state, activations.

Why a model and not a measurement: the question "does Qwen2.5-7B fine-tune in 4-bit on my 16 GB GPU at
batch 4 × 1024 tokens?" must be answered before renting or buying anything. The model is an accounting of
what the lab's own code path keeps in memory — HF Qwen2 + bitsandbytes + peft, a LoRA step through
`labpy.finetune.lm_loss` — written term by term from what autograd saves for backward, and checked against
`torch.autograd.graph.saved_tensors_hooks` (exactly) and against the peak memory of real steps on this CPU.

The terms, for a decoder of L layers (hidden d, K/V width d_kv, h heads, FFN width f, vocabulary V), batch B,
sequence T, LoRA rank r on a set of target matrices:

- weights: quantized linear layers at 4 bits (nf4: 1/2 byte per weight, plus one 8-bit absmax per 64-weight
  block and one fp32 constant per 256 absmaxes with double quantization) or 8 bits (plus one fp32 scale per
  output row); everything else (embeddings, norms, head, biases) at its dtype — fp32 after peft's
  `prepare_model_for_kbit_training`, which upcasts every non-quantized parameter. LoRA adapters are fp32.
- gradients and Adam's two moments: 4 + 8 bytes per *trainable* parameter (only the adapters under LoRA).
- activations saved for backward, per token per layer (`activation_terms`), plus the log-probabilities of the
  loss (V per token, fp32) — for a 150k vocabulary these rival a whole layer; with gradient checkpointing,
  only each layer's input (d per token) is kept and one layer is recomputed at a time during backward.
- transients at the peak (the start of backward): the loss's gradient buffers (2 × B·T·V fp32), or under
  checkpointing the recomputed layer if larger; and one dequantized weight for a 4-bit matmul.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from .errors import UnknownChoiceError

GIB = 2**30
ATTN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANT_BITS = {None: None, "8bit": 8, "4bit": 4}
NF4_BLOCK, NESTED_BLOCK = 64, 256


@dataclass(frozen=True)
class Arch:
    """The shape of a Qwen2-style decoder (the numbers in its HF config)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tie_embeddings: bool = False
    qkv_bias: bool = True            # Qwen2 has biases on q, k, v

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each linear layer of one decoder layer."""
        d, kv, f = self.hidden, self.kv_dim, self.intermediate
        return {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
                "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}

    def linear_params(self) -> int:
        return self.layers * sum(i * o for i, o in self.linear_shapes().values())

    def other_params(self) -> int:
        """Embeddings, head (unless tied), norms (2 per layer + final), q/k/v biases."""
        d = self.hidden
        bias = (d + 2 * self.kv_dim) if self.qkv_bias else 0
        head = 0 if self.tie_embeddings else self.vocab * d
        return self.vocab * d + head + self.layers * (2 * d + bias) + d

    def n_params(self) -> int:
        return self.linear_params() + self.other_params()

    def hf_config(self, max_positions: int) -> Any:
        """A `transformers.Qwen2Config` of this shape (no KV cache: the lab trains and captures whole sequences)."""
        from transformers import Qwen2Config

        return Qwen2Config(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
                           num_hidden_layers=self.layers, num_attention_heads=self.heads,
                           num_key_value_heads=self.kv_heads, tie_word_embeddings=self.tie_embeddings,
                           use_cache=False, max_position_embeddings=max_positions)

    @classmethod
    def from_config(cls, config: Any) -> Arch:
        return cls(hidden=config.hidden_size, layers=config.num_hidden_layers, heads=config.num_attention_heads,
                   kv_heads=config.num_key_value_heads, intermediate=config.intermediate_size,
                   vocab=config.vocab_size, tie_embeddings=bool(config.tie_word_embeddings))


# Qwen2.5-7B, from its config.json: the model the user wants to fine-tune on a 16 GB GPU.
QWEN25_7B = Arch(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vocab=152064,
                 tie_embeddings=False)


@dataclass(frozen=True)
class Setup:
    """How the model is fine-tuned. `rank=0` means full fine-tuning (every parameter trains)."""

    quant: str | None = None                 # None, "8bit", "4bit" (nf4)
    rank: int = 8
    targets: tuple[str, ...] = ATTN_TARGETS
    grad_checkpointing: bool = False
    attn: str = "sdpa"                       # "sdpa" (flash-style: no T×T matrix kept) or "eager"
    param_bytes: int = 4                     # dtype of non-quantized parameters (after any upcast)
    act_bytes: int = 4                       # dtype of activations (fp32 in the lab's path, see module doc)
    compute_bytes: int = 4                   # 4-bit compute dtype (the dequantized weight's element size)
    double_quant: bool = True

    def __post_init__(self) -> None:
        if self.quant not in QUANT_BITS:
            raise UnknownChoiceError("quant", self.quant, [str(q) for q in QUANT_BITS])
        if self.attn not in ("sdpa", "eager"):
            raise UnknownChoiceError("attention implementation", self.attn, ("eager", "sdpa"))
        unknown = set(self.targets) - set(ALL_LINEAR)
        if unknown:
            raise UnknownChoiceError("LoRA target", sorted(unknown)[0], ALL_LINEAR)

    @property
    def full(self) -> bool:
        return self.rank == 0


# ---- parameters, gradients, optimizer state ----

def lora_params(arch: Arch, setup: Setup) -> int:
    """r·(d_in + d_out) per adapted matrix per layer."""
    if setup.full:
        return 0
    shapes = arch.linear_shapes()
    return arch.layers * sum(setup.rank * sum(shapes[t]) for t in setup.targets)


def trainable_params(arch: Arch, setup: Setup) -> int:
    return arch.n_params() if setup.full else lora_params(arch, setup)


def quant_constant_bytes(arch: Arch, setup: Setup) -> int:
    """The quantization constants bitsandbytes keeps beside the packed weights."""
    if setup.quant == "4bit":
        per_layer = []
        for d_in, d_out in arch.linear_shapes().values():
            blocks = -(-(d_in * d_out) // NF4_BLOCK)
            if setup.double_quant:   # absmax in 8 bits, one fp32 offset and one fp32 scale per 256 of them
                per_layer.append(blocks + 4 * -(-blocks // NESTED_BLOCK) + 4 + 256 * 4 + 16 * 4)
            else:
                per_layer.append(4 * blocks + 16 * 4)
        return arch.layers * sum(per_layer)
    if setup.quant == "8bit":   # one fp32 scale per output row
        return arch.layers * 4 * sum(d_out for _, d_out in arch.linear_shapes().values())
    return 0


def weight_bytes(arch: Arch, setup: Setup) -> dict[str, int]:
    """Bytes of the model itself: base weights (quantized or not), constants, other parameters, adapters."""
    bits = QUANT_BITS[setup.quant]
    linear = arch.linear_params() * (bits / 8 if bits else setup.param_bytes)
    return {"linear weights": int(linear), "quantization constants": quant_constant_bytes(arch, setup),
            "embeddings, norms, head": arch.other_params() * setup.param_bytes,
            "LoRA adapters": 4 * lora_params(arch, setup)}


def optimizer_bytes(arch: Arch, setup: Setup) -> dict[str, int]:
    """fp32 gradients and AdamW's exp_avg and exp_avg_sq, for trainable parameters only."""
    n = trainable_params(arch, setup)
    return {"gradients": 4 * n, "Adam moments": 8 * n}


# ---- activations saved for backward ----

def _adapted(setup: Setup, name: str) -> bool:
    return setup.full or name in setup.targets


def _lora_r(setup: Setup, name: str) -> int:
    return 0 if setup.full or name not in setup.targets else setup.rank


def activation_terms(arch: Arch, setup: Setup, seq_len: int, first_layer: bool = False) -> dict[str, int]:
    """Elements saved for backward per token in one decoder layer (no checkpointing), by what saves them.

    Autograd saves an input only when some gradient needs it. Frozen linear layers save nothing of their
    input (the input gradient needs only the weight); adapted ones save their input once (q, k, v share it;
    gate and up share theirs) plus the rank-r output of A. In the first layer under LoRA nothing below
    trains, so the residual stream needs no gradient and some saves drop out (`first_layer=True`).
    """
    d, kv, f, h = arch.hidden, arch.kv_dim, arch.intermediate, arch.heads
    ad = {t: _adapted(setup, t) for t in ALL_LINEAR}
    x_rg = setup.full or setup.grad_checkpointing or not first_layer     # does the layer input need a gradient?
    q_rg, k_rg, v_rg = (x_rg or ad[t] for t in ("q_proj", "k_proj", "v_proj"))
    core_rg = q_rg or k_rg or v_rg
    norm = (d + 1 + (d if setup.full else 0))    # input and 1/rms; the normalised input too if its weight trains
    terms = {"input norm": norm if x_rg else 0,
             "attention input (adapted q/k/v)": d if (ad["q_proj"] or ad["k_proj"] or ad["v_proj"]) else 0}
    if setup.attn == "sdpa":                     # q, k, v (K/V heads only), output, log-sum-exp
        terms["attention q, k, v, output"] = (2 * d + 2 * kv + h) if core_rg else 0
        terms["o_proj input"] = d if ad["o_proj"] and not core_rg else 0   # else: the attention output's storage
    else:                                        # q @ k^T saves each for the other's gradient; probs @ v likewise
        terms["attention q, k, v, output"] = d * (k_rg + q_rg + (q_rg or k_rg))   # q, k^T, v (K/V repeated)
        terms["attention probabilities (T×T)"] = h * seq_len if core_rg else 0
        terms["o_proj input"] = d if ad["o_proj"] else 0
    h_rg = x_rg or core_rg or ad["o_proj"]       # does the residual after attention need a gradient?
    gate_rg, up_rg = h_rg or ad["gate_proj"], h_rg or ad["up_proj"]
    terms["post-attention norm"] = norm if h_rg else 0
    terms["MLP gate, up, act"] = f * (2 * gate_rg + up_rg)   # silu saves gate; act·up saves up and act
    terms["MLP input (adapted gate/up)"] = d if (ad["gate_proj"] or ad["up_proj"]) else 0
    terms["down_proj input"] = f if ad["down_proj"] else 0
    terms["LoRA A outputs"] = sum(_lora_r(setup, t) for t in ALL_LINEAR)
    return terms


def layer_activation_bytes(arch: Arch, setup: Setup, batch: int, seq_len: int, first_layer: bool = False) -> int:
    return batch * seq_len * sum(activation_terms(arch, setup, seq_len, first_layer).values()) * setup.act_bytes


def activation_bytes(arch: Arch, setup: Setup, batch: int, seq_len: int) -> dict[str, int]:
    """Bytes saved for backward at the end of the forward pass, by part of the model."""
    tokens, d, a = batch * seq_len, arch.hidden, setup.act_bytes
    if setup.grad_checkpointing:
        layers = arch.layers * tokens * d * a    # only each checkpointed layer's input
        rope = 0
    else:
        layers = (layer_activation_bytes(arch, setup, batch, seq_len, first_layer=True)
                  + (arch.layers - 1) * layer_activation_bytes(arch, setup, batch, seq_len))
        rope = 2 * seq_len * arch.head_dim * a   # cos and sin, shared by every layer and sequence
    final = tokens * (d + 1 + (2 * d if setup.full else 0)) * a
    return {"decoder layers": layers, "rotary cos/sin": rope, "final norm": final,
            "loss log-probabilities": tokens * arch.vocab * 4,
            "targets (and token ids when the embedding trains)": tokens * 8 * (2 if setup.full else 1)}


def transient_bytes(arch: Arch, setup: Setup, batch: int, seq_len: int) -> dict[str, int]:
    """Short-lived buffers that coexist with the saved activations at the peak."""
    loss_grads = 2 * batch * seq_len * arch.vocab * 4     # d loss / d log-probs and d loss / d logits
    recompute = layer_activation_bytes(arch, setup, batch, seq_len) if setup.grad_checkpointing else 0
    biggest = max(i * o for i, o in arch.linear_shapes().values())
    dequant = biggest * setup.compute_bytes if setup.quant == "4bit" else 0
    return {"loss gradients / recomputed layer": max(loss_grads, recompute), "dequantized weight": dequant}


def peak_bytes(arch: Arch, setup: Setup, batch: int, seq_len: int) -> dict[str, int]:
    """Every term of the peak of a training step, by name; `total` is the peak.

    The peak comes at the start of backward: model, Adam state, every saved activation and the loss's
    gradient buffers. Gradients are not yet there (the loop frees them before backward); they grow as
    activations are freed, so they raise the peak only when they outweigh the activations (full fine-tuning,
    tiny batches): peak = weights + Adam + max(activations + transients, gradients).
    """
    weights, optimizer = weight_bytes(arch, setup), optimizer_bytes(arch, setup)
    acts = activation_bytes(arch, setup, batch, seq_len)
    trans = transient_bytes(arch, setup, batch, seq_len)
    parts = {**weights, **optimizer, **{f"activations: {k}": v for k, v in acts.items()},
             **{f"transient: {k}": v for k, v in trans.items()}}
    at_backward = sum(acts.values()) + sum(trans.values())
    total = sum(weights.values()) + optimizer["Adam moments"] + max(at_backward, optimizer["gradients"])
    return {**parts, "total": total}


def training_growth_bytes(arch: Arch, setup: Setup, batch: int, seq_len: int) -> int:
    """What training adds on top of the loaded model at its peak: Adam state, activations, transients."""
    return peak_bytes(arch, setup, batch, seq_len)["total"] - sum(weight_bytes(arch, setup).values())


def fit_table(arch: Arch, setups: dict[str, Setup], batches: Iterable[int], seq_lens: Iterable[int],
              capacity_bytes: float, reserve_bytes: float) -> pd.DataFrame:
    """Predicted peak for every (setup, batch, seq_len), and whether it fits `capacity - reserve`."""
    rows = []
    for name, setup in setups.items():
        for b in batches:
            for t in seq_lens:
                total = peak_bytes(arch, setup, b, t)["total"]
                rows.append({"setup": name, "batch": b, "seq_len": t, "tokens": b * t, "peak_gib": total / GIB,
                             "fits": total <= capacity_bytes - reserve_bytes})
    return pd.DataFrame(rows)


# ---- measurement helpers ----

def saved_tensor_bytes(model: torch.nn.Module, step: Callable[[], torch.Tensor]) -> tuple[int, pd.DataFrame]:
    """Bytes of distinct storages autograd saves for backward during `step()` (which returns a loss),
    parameters excluded (they exist anyway); then runs backward. Returns (bytes, one row per storage)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, dict[str, Any]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = {"shape": tuple(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                         "bytes": storage.nbytes()}
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    rows = pd.DataFrame(list(seen.values()), columns=["shape", "dtype", "bytes"])
    return int(rows["bytes"].sum()) if len(rows) else 0, rows


def resident_model_bytes(model: torch.nn.Module) -> int:
    """Bytes a loaded model really holds: parameters, buffers and bitsandbytes' quantization constants
    (which `get_memory_footprint` leaves out). Each storage counts once (peft wrappers share their base's)."""
    tensors: dict[int, int] = {}

    def add(t: Any) -> None:
        if isinstance(t, torch.Tensor) and t.numel():
            tensors[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    for t in (*model.parameters(), *model.buffers()):
        add(t)
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        for qs in (state, getattr(state, "state2", None)):
            if qs is not None:
                for name in ("absmax", "code", "offset"):
                    add(getattr(qs, name, None))
        add(getattr(weight, "SCB", None))
        add(getattr(getattr(module, "state", None), "SCB", None))
    return sum(tensors.values())


def tensor_peak_bytes(step: Callable[[], None]) -> int:
    """Peak growth of live CPU tensor bytes while `step()` runs, from torch.profiler's memory timeline: what
    PyTorch's allocator hands out (the CPU's analogue of `torch.cuda.max_memory_allocated`), without the
    libraries' own buffers and the heap's slack that the resident size also sees."""
    import numpy as np
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline   # private, stable at the pinned torch

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        step()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    live = np.asarray(sizes).sum(axis=1)                                 # bytes alive after each event
    return int(live.max() - live[0])


def rope_buffer_bytes(model: torch.nn.Module) -> int:
    """The rotary embedding's inv_freq buffer(s), counted by `resident_model_bytes` but not by the model."""
    return sum(b.numel() * b.element_size() for n, b in model.named_buffers() if "rotary" in n)
