"""Fine-tune a causal LM (LoRA or full) with labpy's one training loop, tracking held-out loss on several domains.

Why a helper: every fine-tuning experiment (LoRA rank, forgetting, batch size × LR, QLoRA) wants the same
thing — train on a new domain while measuring the held-out loss on the new *and* the original domain at every
eval step — so "learning" and "forgetting" come out of one run, on the same curves, with the same loss.

Batches are (B, T+1) token ids: position t predicts token t+1 (the lab LM's `lm_loss`); eval sets are fixed
(N, T+1) windows. Every example has T targets, so a batch's mean loss is also the mean of per-example losses
(what the gradient-noise estimates in `experiments/batch_lr.py` assume).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .device import lab_device, model_device, to_device
from .models.lab_lm import lm_loss, mean_loss
from .train import TrainLog, TrainSpec, train
from .validation import check_ranges, one_of, require

if TYPE_CHECKING:
    from .tasks.source_code import FinetuneData


def make_eval_fn(eval_sets: Mapping[str, torch.Tensor], batch_size: int = 16
                 ) -> Callable[[torch.nn.Module], dict[str, float]]:
    """`eval_fn(model) -> {"loss_<name>": ...}` for `labpy.train.train` (which calls it in eval mode, no grad).

    A 4-bit base is safe to evaluate between steps once `labpy.models.lora.add_lora` has switched off
    bitsandbytes' in-place CPU repacking (the eval-then-train trap).
    """
    def eval_fn(model: torch.nn.Module) -> dict[str, float]:
        device = model_device(model)                       # windows already there are not copied
        return {f"loss_{name}": mean_loss(model, windows.to(device), batch_size)
                for name, windows in eval_sets.items()}

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
    device = lab_device()
    eval_sets = to_device(dict(eval_sets), device)   # once, not at every eval
    return train(model, batch_fn, lm_loss, spec, eval_fn=make_eval_fn(eval_sets, eval_batch_size),
                 work_dir=work_dir, progress=progress, desc=desc, device=device)


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
            out[_base_name(name)] = {"A": module.lora_A[adapter].weight.detach().to("cpu", copy=True),
                                     "B": module.lora_B[adapter].weight.detach().to("cpu", copy=True),
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


# ---- one fine-tuning run of the lab LM on the source-code domain (shared by the fine-tuning experiments) ----

@dataclass(frozen=True)
class FinetuneConfig:
    """A fine-tuning run of a base LM on stdlib source code, with held-out source and pydoc losses tracked."""

    base: str = "lab-lm:cpu"       # anything `labpy.models.lm.load_lm` accepts
    rank: int = 8                  # LoRA rank; 0 means full fine-tuning (every parameter trains)
    alpha: float = 0.0             # LoRA alpha; 0 means alpha = rank (scale alpha/r = 1 at every rank)
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    lr: float = 1e-3
    steps: int = 300
    batch_size: int = 8
    seq_len: int = 128
    warmup_steps: int = 20
    schedule: str = "constant"
    replay_rows: int = 0           # rows of each batch taken from the pydoc training split (replay)
    eval_every: int = 25
    eval_windows: int = 64         # held-out windows per domain
    source_chars: int = 400_000
    seed: int = 0                  # LoRA initialisation and batch order

    def __post_init__(self) -> None:
        check_ranges(self, nonneg_int=("rank", "warmup_steps", "replay_rows", "seed"), nonneg=("alpha",),
                     positive=("lr",), positive_int=("steps", "batch_size", "seq_len", "eval_every", "eval_windows",
                                                     "source_chars"),
                     rules={"schedule": one_of("constant", "cosine")})
        require(self, self.replay_rows <= self.batch_size, "replay_rows",
                f"is out of range; replayed rows replace rows of a batch, so it must be <= batch_size = "
                f"{self.batch_size}")
        require(self, self.rank == 0 or len(self.targets) > 0, "targets",
                "is out of range; LoRA (rank > 0) needs at least one target module, e.g. --set targets=q_proj,v_proj")


@dataclass
class FinetuneOutcome:
    model: torch.nn.Module
    log: TrainLog
    base_weights: dict[str, torch.Tensor]     # the targets' weights before training (full fine-tuning only)
    info: dict[str, object]
    data: FinetuneData                        # the token splits and eval windows it trained and measured on


def target_weights(model: torch.nn.Module, targets: Sequence[str]) -> dict[str, torch.Tensor]:
    """Copies of the weight matrices of the target linear layers, keyed by module name."""
    return {_base_name(name): module.weight.detach().to("cpu", torch.float32, copy=True)
            for name, module in model.named_modules()
            if name.rsplit(".", 1)[-1] in targets and isinstance(module, torch.nn.Linear)}


def make_trainable(model: torch.nn.Module, rank: int, alpha: float = 0.0,
                   targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"), seed: int = 0) -> torch.nn.Module:
    """LoRA adapters of `rank` (alpha 0 means alpha = rank), or every parameter unfrozen for rank 0."""
    from .models.lora import add_lora

    if rank < 0:
        raise ValueError(f"rank must be >= 0 (0 = full fine-tuning), got {rank}")
    if rank == 0:
        return model.requires_grad_(True)
    torch.manual_seed(seed)                                               # LoRA A's random init
    return add_lora(model, rank, alpha or None, targets=targets)


def load_base(name: str, quant: str | None = None) -> tuple[torch.nn.Module, object]:
    """A fresh base model (fp32 or `quant`; sdpa attention: faster, and no attention maps are needed) and its
    tokenizer, on the lab's device: loaded straight onto a GPU (`device_map`), where bitsandbytes quantizes
    it; on the CPU as before (bitsandbytes' CPU kernels)."""
    from .models.lm import load_lm

    device = lab_device()
    placement = {"device_map": {"": str(device)}} if device.type != "cpu" else {}
    return load_lm(name, quant, attn_implementation="sdpa", **placement)


def prepare_model(config: FinetuneConfig) -> tuple[torch.nn.Module, object]:
    """The base model ready to train: LoRA adapters (rank > 0) or every parameter unfrozen (rank 0)."""
    model, tokenizer = load_base(config.base)
    return make_trainable(model, config.rank, config.alpha, config.targets, config.seed), tokenizer


def run_finetune(config: FinetuneConfig, work_dir: Path | None = None, progress: bool | None = None,
                 desc: str = "finetune") -> FinetuneOutcome:
    """Load the base, build the data, fine-tune; the caller stores what its page needs."""
    from .tasks.corpus import lm_batch_fn
    from .tasks.source_code import finetune_data

    model, tokenizer = prepare_model(config)
    data = finetune_data(tokenizer, config.seq_len, config.eval_windows, config.source_chars)
    batch_fn = lm_batch_fn(data.source_train, config.batch_size, config.seq_len, config.seed)
    if config.replay_rows:
        replay = lm_batch_fn(data.pydoc_train, config.batch_size, config.seq_len, config.seed + 7919)
        batch_fn = mixed_batch_fn(batch_fn, replay, config.replay_rows)
    base = target_weights(model, config.targets) if config.rank == 0 else {}
    spec = TrainSpec(steps=config.steps, lr=config.lr, warmup_steps=config.warmup_steps, schedule=config.schedule,
                     eval_every=config.eval_every, seed=config.seed, resume_every=max(50, config.steps // 4))
    log = finetune(model, batch_fn, spec, data.eval_sets, work_dir=work_dir, progress=progress, desc=desc)
    info = {**data.info, "trainable_params": trainable_count(model),
            "total_params": sum(p.numel() for p in model.parameters())}
    return FinetuneOutcome(model, log, base, info, data)


def loss_summary(log: TrainLog, names: Sequence[str] = ("source", "pydoc")) -> dict[str, float]:
    """Base and final held-out loss per domain, and their change (negative: learned; positive: forgot)."""
    first, last = log.evals.iloc[0], log.evals.iloc[-1]
    out: dict[str, float] = {"final_train_loss": float(log.steps.loss.iloc[-1])}
    for name in names:
        out[f"base_{name}"] = float(first[f"loss_{name}"])
        out[f"final_{name}"] = float(last[f"loss_{name}"])
        out[f"delta_{name}"] = out[f"final_{name}"] - out[f"base_{name}"]
    return out
