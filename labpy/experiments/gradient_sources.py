"""Where the lab LM's late gradient growth comes from: each weight matrix's gradient split into exact factors.

`gradient_growth` ruled out the LR decay and weight decay, and `sharpness` ruled out a sharpening surface. The
suspect left: a matrix's gradient follows the growing weights around it. For a linear map y = W x applied at N
token positions, the gradient of the mean loss is G = Σ_t g_t x_tᵀ, where g_t = ∂L/∂y_t is the backward signal
reaching the matrix's output at position t. Its Frobenius norm splits exactly into four factors:

    ‖G‖ = coherence × pairing × input size × backward size
      input size    = mean_t ‖x_t‖               what the matrix reads (the layers before it set this)
      backward size = N · mean_t ‖g_t‖           what reaches its output (the layers after it set this)
      pairing       = mean_t ‖g_t‖‖x_t‖ / (mean ‖g‖ · mean ‖x‖)   do large inputs meet large signals?
      coherence     = ‖Σ_t g_t x_tᵀ‖ / Σ_t ‖g_t‖‖x_t‖            do the positions' gradients add or cancel?

so a growth of the gradient from one step to another is the product of the four factors' growths. This
experiment trains the lab LM again, exactly as stored, and at a few steps measures the four factors for every
attention and MLP matrix on a fixed batch of held-out windows, with every parameter's weight RMS (the weights
"around" each matrix). The backward size at the attention-output and down projections is the gradient reaching
the residual stream itself, since their outputs are added to it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.lab_lm import lm_loss
from ..store import RunResult
from ..validation import POSITIVE_INT, check_ranges
from .lab_lm import SMOKE, LabLMConfig, retrain_measuring
from .registry import Experiment, RunContext, register

ATTENTION_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj")
LINEAR_KINDS = (*ATTENTION_KINDS, "gate_proj", "up_proj", "down_proj")
FACTOR_COLUMNS = ["grad_rms", "input_size", "backward_size", "pairing", "coherence", "autograd_gap"]


@dataclass(frozen=True)
class GradientSourcesConfig:
    measure_at: tuple[int, ...] = (150, 300, 600, 900, 1200, 1500)   # training steps (multiples of eval_every)
    windows: int = 32                 # held-out windows in the fixed batch (sharpness measures on the same ones)
    smoke: bool = False               # the smoke lab LM (measured at its own eval steps) instead of the cpu one

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("windows",), rules={"measure_at": POSITIVE_INT})

    def lab_lm(self) -> LabLMConfig:
        return SMOKE if self.smoke else LabLMConfig()


def linear_modules(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """'layer.kind' -> module, for the attention and MLP projections of every decoder layer."""
    return {f"{i}.{kind}": getattr(layer.self_attn if kind in ATTENTION_KINDS else layer.mlp, kind)
            for i, layer in enumerate(model.model.layers) for kind in LINEAR_KINDS}


def factor_row(x: torch.Tensor, g: torch.Tensor) -> dict[str, float]:
    """The four factors of the gradient Σ_t g_t x_tᵀ of one matrix, from its inputs x (N, in) and the backward
    signal at its output g (N, out), plus the gradient's RMS they multiply out to."""
    n = x.shape[0]
    x_norm, g_norm = x.norm(dim=1), g.norm(dim=1)                                  # (N,), (N,)
    grad = g.T @ x                                                                  # (out, in)
    paired = (x_norm * g_norm).mean()
    return {"grad_rms": float(grad.norm() / grad.numel() ** 0.5),
            "input_size": float(x_norm.mean()), "backward_size": float(n * g_norm.mean()),
            "pairing": float(paired / (x_norm.mean() * g_norm.mean())),
            "coherence": float(grad.norm() / (n * paired))}


def gradient_factors(model: torch.nn.Module, batch: torch.Tensor) -> list[dict]:
    """One forward and backward pass on `batch` (B, T + 1): the factor row of every attention and MLP matrix, each
    with the relative gap between its gradient RMS and autograd's own gradient of that weight (a check that the
    hooks saw everything the gradient is made of; the projections' biases are left out, as a bias's gradient is
    the backward signal alone)."""
    modules = linear_modules(model)
    inputs: dict[str, torch.Tensor] = {}
    signals: dict[str, torch.Tensor] = {}

    def capture(name: str):
        def hook(module, args, output):
            inputs[name] = args[0].detach().flatten(0, -2)                           # (N, in)
            output.register_hook(lambda grad: signals.__setitem__(name, grad.detach().flatten(0, -2)))
        return hook

    handles = [m.register_forward_hook(capture(name)) for name, m in modules.items()]
    try:
        loss = lm_loss(model, batch)
        weights = [m.weight for m in modules.values()]
        autograd = torch.autograd.grad(loss, weights)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name, reference in zip(modules, autograd):
        layer, kind = name.split(".")
        row = {"layer": int(layer), "kind": kind, **factor_row(inputs[name], signals[name])}
        row["autograd_gap"] = abs(row["grad_rms"] / float(reference.norm() / reference.numel() ** 0.5) - 1)
        rows.append(row)
    return rows


def weight_rows(model: torch.nn.Module) -> list[dict]:
    """Every parameter's weight RMS: the weights around each matrix, norm gains included."""
    return [{"name": n, "weight_rms": float(p.detach().pow(2).mean().sqrt())} for n, p in model.named_parameters()]


def run(config: GradientSourcesConfig, ctx: RunContext) -> RunResult:
    def measure(model: torch.nn.Module, batch: torch.Tensor) -> list[dict]:
        return ([{"table": "factors", **row} for row in gradient_factors(model, batch)]
                + [{"table": "weights", **row} for row in weight_rows(model)])

    lab = config.lab_lm()
    log = retrain_measuring(lab, config.measure_at, config.windows, measure, ctx, f"gradient_sources {ctx.label}")
    custom = log.custom_stats
    factors = custom[custom.table == "factors"][["step", "layer", "kind", *FACTOR_COLUMNS]].reset_index(drop=True)
    weights = custom[custom.table == "weights"][["step", "name", "weight_rms"]].reset_index(drop=True)
    factors["layer"] = factors.layer.astype(int)
    summary = {"final_val_loss": float(log.evals.val_loss.iloc[-1]), "measured_steps": sorted(set(config.measure_at)),
               "max_autograd_gap": float(factors.autograd_gap.max())}
    return RunResult(tables={"factors": factors, "weights": weights, "evals": log.evals[["step", "val_loss"]]},
                     summary=summary, seed=lab.seed)


register(Experiment(
    name="gradient_sources",
    title="Where the lab LM's late gradient growth comes from: each matrix's gradient split into exact factors",
    track="Training dynamics",
    page="experiments/optimizer-state.qmd",
    version=1,
    config_type=GradientSourcesConfig,
    scales={"smoke": {"lab-lm": GradientSourcesConfig(measure_at=(10, 30), windows=4, smoke=True)},
            "cpu": {"lab-lm": GradientSourcesConfig()}},
    run=run,
    description="The lab LM retrained as stored; at six steps, every attention and MLP matrix's gradient on a fixed "
                "held-out batch split into input size, backward size, pairing and coherence, and every weight's RMS.",
))
