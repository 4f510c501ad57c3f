"""Fine-tune a causal LM (LoRA or full) with labpy's one training loop, tracking held-out loss on several domains.

Why a helper: every fine-tuning experiment (LoRA rank, forgetting, batch size × LR, QLoRA) wants the same
thing — train on a new domain while measuring the held-out loss on the new *and* the original domain at every
eval step — so "learning" and "forgetting" come out of one run, on the same curves, with the same loss.

Batches are (B, T+1) token ids: position t predicts token t+1. Eval sets are fixed (N, T+1) windows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from .train import TrainLog, TrainSpec, train


def lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a (B, T+1) batch: every example has T targets, so this is also the
    mean over examples of per-example mean losses (what the gradient-noise estimates assume)."""
    logits = model(input_ids=batch[:, :-1]).logits                       # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())


@torch.no_grad()
def eval_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token loss over fixed windows (N, T+1), in chunks of `batch_size` (all chunks weigh per token)."""
    total, count = 0.0, 0
    for chunk in windows.split(batch_size):
        logits = model(input_ids=chunk[:, :-1]).logits                   # (b, T, V)
        total += F.cross_entropy(logits.flatten(0, 1).float(), chunk[:, 1:].flatten(), reduction="sum").item()
        count += chunk[:, 1:].numel()
    return total / count


def _linear4bit_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:                                                  # pragma: no cover - bnb is a dependency
        return []
    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def make_eval_fn(eval_sets: Mapping[str, torch.Tensor], batch_size: int = 16
                 ) -> Callable[[torch.nn.Module], dict[str, float]]:
    """`eval_fn(model) -> {"loss_<name>": ...}` for `labpy.train.train`.

    4-bit layers stay in training mode during the eval: bitsandbytes repacks a 4-bit weight in place on a
    CPU forward in eval mode (see stack-facts), after which that object cannot train. Their output is the
    same in either mode, and eval runs under `no_grad`, so nothing else changes.
    """
    def eval_fn(model: torch.nn.Module) -> dict[str, float]:
        for module in _linear4bit_modules(model):
            module.training = True
        return {f"loss_{name}": eval_loss(model, windows, batch_size) for name, windows in eval_sets.items()}

    return eval_fn


def finetune(model: torch.nn.Module, batch_fn: Callable[[int], torch.Tensor], spec: TrainSpec,
             eval_sets: Mapping[str, torch.Tensor], *, work_dir: Path | None = None, progress: bool | None = None,
             desc: str = "finetune", eval_batch_size: int = 16) -> TrainLog:
    """Train the parameters of `model` that require grad (LoRA adapters, or all for full fine-tuning).

    `log.evals` has `loss_<name>` for every eval set at step 0 (before any update) and every
    `spec.eval_every` steps; `log.steps` the training loss, LR and gradient norm of every step.
    """
    if not eval_sets:
        raise ValueError("finetune needs at least one eval set, e.g. {'source': windows, 'pydoc': windows}")
    for name, windows in eval_sets.items():
        if windows.ndim != 2 or windows.shape[1] < 2:
            raise ValueError(f"eval set {name!r} must be (N, T+1) token ids with T >= 1, got {tuple(windows.shape)}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("no parameter of the model requires grad: add LoRA adapters or unfreeze the model")
    torch.manual_seed(spec.seed)   # LoRA dropout, if any, is then reproducible
    return train(model, batch_fn, lm_loss, spec, eval_fn=make_eval_fn(eval_sets, eval_batch_size),
                 work_dir=work_dir, progress=progress, desc=desc)


def mixed_batch_fn(primary: Callable[[int], torch.Tensor], replay: Callable[[int], torch.Tensor],
                   replay_rows: int) -> Callable[[int], torch.Tensor]:
    """Replay: each batch keeps its size but swaps its last `replay_rows` rows for original-domain rows."""
    def batch_fn(step: int) -> torch.Tensor:
        new, old = primary(step), replay(step)                           # (B, T+1) each
        if not 0 <= replay_rows <= new.shape[0]:
            raise ValueError(f"replay_rows={replay_rows} must be in [0, batch size {new.shape[0]}]")
        return torch.cat([new[: new.shape[0] - replay_rows], old[:replay_rows]])
    return batch_fn


def trainable_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_factors(model: torch.nn.Module, adapter: str = "default") -> dict[str, dict[str, torch.Tensor]]:
    """Each LoRA-wrapped linear's factors: {module name: {"A": (r, d_in), "B": (d_out, r), "scale": ()}}.

    Names are relative to the base model (peft's `base_model.model.` prefix removed), e.g.
    `model.layers.0.self_attn.q_proj`.
    """
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and adapter in getattr(module, "lora_A", {}):
            out[_base_name(name)] = {"A": module.lora_A[adapter].weight.detach().clone(),
                                     "B": module.lora_B[adapter].weight.detach().clone(),
                                     "scale": torch.tensor(float(module.scaling[adapter]))}
    if not out:
        raise ValueError(f"the model has no LoRA adapter {adapter!r}; add one with labpy.models.lora.add_lora")
    return out


def _base_name(name: str) -> str:
    return name.removeprefix("base_model.model.")


def lora_delta(factors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """ΔW = B·A·(α/r), (d_out, d_in), in float32."""
    return (factors["B"].float() @ factors["A"].float()) * float(factors["scale"])


def flatten_factors(factors: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """For the store: `{name}.A`, `{name}.B`, `{name}.scale` tensors."""
    return {f"{name}.{part}": t for name, parts in factors.items() for part, t in parts.items()}


def unflatten_factors(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        name, part = key.rsplit(".", 1)
        out.setdefault(name, {})[part] = tensor
    return out
