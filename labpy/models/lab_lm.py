"""The lab language model: a small HF `transformers` Qwen2 (GQA, RoPE, RMSNorm, gated MLP) trained here.

Why HF Qwen2 rather than a toy: the base model for the fine-tuning pages must load through the same path as a
real 7B checkpoint (`from_pretrained`, peft, bitsandbytes), so it is the real architecture, only small.

`hf_copy_dir(entry, ...)` turns the stored run (experiment `lab_lm`, label `base`: fp16 weights, tokenizer file,
HF config in the summary) into an ordinary `save_pretrained` folder under `runs/.work/hf/` (git-ignored),
which `Qwen2ForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` open; `load_lm("lab-lm")` finds it
through `labpy.experiments.lab_lm.lab_lm_dir(scale)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    # Imported where a model or config is built instead: transformers and its Qwen2 classes take ~4 s to import,
    # which a page that only reads a lab-LM experiment's stored tables should not pay.
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from ..store import RunEntry
from ..tasks.corpus import EOS, tokenizer_from_json
from .lm import quiet_hf_progress

EXPERIMENT, LABEL, CHECKPOINT, TOKENIZER_FILE = "lab_lm", "base", "final", "tokenizer.json"
HF_SUBDIR = "hf"
READY_MARKER = "lab_lm_entry.json"

DEFAULTS: dict[str, Any] = dict(
    hidden_size=128,
    intermediate_size=384,          # gated MLP: gate, up (d -> 384) and down (384 -> d)
    num_hidden_layers=4,
    num_attention_heads=4,          # head_dim 32
    num_key_value_heads=2,          # grouped-query attention: 2 query heads share each K/V head
    max_position_embeddings=1024,   # RoPE has no learned positions; this only bounds the context
    tie_word_embeddings=True,       # the unembedding is the embedding: half the vocabulary parameters
    rms_norm_eps=1e-6,
    initializer_range=0.02,
    use_cache=False,
)


def lab_lm_config(vocab_size: int, **overrides: Any) -> Qwen2Config:
    """The lab LM's Qwen2 config; `overrides` replace any default (e.g. a smaller model for a sweep)."""
    fields = {**DEFAULTS, **overrides}
    if fields["num_attention_heads"] % fields["num_key_value_heads"]:
        raise ValueError(f"num_attention_heads={fields['num_attention_heads']} must be a multiple of "
                         f"num_key_value_heads={fields['num_key_value_heads']} (grouped-query attention)")
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0, **fields)


def build_lab_lm(config: Qwen2Config, seed: int) -> Qwen2ForCausalLM:
    """A freshly initialised model; the seed alone fixes the weights."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def per_token_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Next-token loss of every target (B, T) for windows (B, T+1): position t predicts token t+1."""
    logits = model(input_ids=batch[:, :-1]).logits                                   # (B, T, V)
    return F.cross_entropy(logits.transpose(1, 2).float(), batch[:, 1:], reduction="none")  # (B, T)


def lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of a (B, T+1) batch (the training objective)."""
    return per_token_loss(model, batch).mean()


@torch.no_grad()
def mean_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 32) -> float:
    """Mean loss over (N, T+1) eval windows, in chunks (every window has the same number of targets)."""
    total = sum(per_token_loss(model, windows[i:i + batch_size]).sum().item()
                for i in range(0, len(windows), batch_size))
    return total / (windows.shape[0] * (windows.shape[1] - 1))


def storable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the tied `lm_head.weight` (it is the embedding): no duplicate in the store."""
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    return state


def model_from_state(config: Qwen2Config, state: dict[str, torch.Tensor]) -> Qwen2ForCausalLM:
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise ValueError(f"checkpoint does not fit the config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.eval()


def load_lab_lm(entry) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """Model (fp32, eval mode) and tokenizer from a stored `lab_lm` entry, without touching the disk cache."""
    from transformers import Qwen2Config

    config = Qwen2Config(**entry.summary["hf_config"])
    model = model_from_state(config, entry.checkpoint(CHECKPOINT))
    return model, tokenizer_from_json(entry.file(TOKENIZER_FILE).read_bytes())


def hf_copy_dir(entry: RunEntry, cache_root: Path) -> Path:
    """A `save_pretrained` folder of a stored lab LM entry under `cache_root`, built once per stored weights.
    (`labpy.experiments.lab_lm.lab_lm_dir(scale)` finds the entry; this module never looks up experiments.)"""
    # Keyed by the hashes of the weights and tokenizer it is built from (verified against the entry's manifest
    # by `results`): `lab run lab_lm --force` makes a new folder instead of leaving a stale copy in use.
    digest = hashlib.sha256("".join(entry.file_digest(f) for f in (f"checkpoints/{CHECKPOINT}.safetensors",
                                                                   f"files/{TOKENIZER_FILE}")).encode()).hexdigest()
    target = cache_root / f"{EXPERIMENT}-{entry.key}-{digest[:12]}"
    if (target / READY_MARKER).is_file():
        return target
    for stale in target.parent.glob(f"{EXPERIMENT}-{entry.key}-*"):   # copies of weights no longer stored
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        model, tokenizer = load_lab_lm(entry)
        with quiet_hf_progress():          # a progress bar in a page's kernel is a widget that needs a CDN
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        (tmp / READY_MARKER).write_text(json.dumps({"experiment": EXPERIMENT, "key": entry.key, "digest": digest,
                                                    "scale": entry.scale, "eos_token": EOS}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---- naming the model's parameters (the optimizer-state page and the experiments that retrain the lab LM) ----

MATRIX_KINDS = ("embedding", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def parameter_kind(name: str) -> tuple[str, str]:
    """(layer, kind) of a Qwen2 parameter name: ('2', 'q_proj.weight'), ('embed', 'embedding'), ('final', 'norm')."""
    parts = name.split(".")
    if "embed_tokens" in parts:
        return "embed", "embedding"
    if name == "model.norm.weight":
        return "final", "norm"
    if "layers" in parts:
        i = parts.index("layers")
        layer, rest = parts[i + 1], parts[i + 2:]
        module = rest[-2]
        kind = "norm" if module.endswith("layernorm") else module
        return layer, f"{kind}.{rest[-1]}" if rest[-1] == "bias" else kind
    return "other", name
