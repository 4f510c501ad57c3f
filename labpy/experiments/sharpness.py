"""Does the lab LM's loss surface sharpen where its late gradients grow?

`gradient_growth` ruled out the learning rate's decay and weight decay as the reason the lab LM's gradients grow
late in training, and found the growth in the query and MLP matrices while the embedding's gradient stays flat.
The suspect left is the surface itself. This experiment trains the lab LM again, exactly as stored, and at a few
steps measures the curvature of the loss on a fixed batch of held-out windows with Hessian-vector products
(double backward, no Hessian is ever formed):

- the largest Hessian eigenvalue, by power iteration from a fixed random start;
- for each kind of weight matrix (embedding, query, key, value, attention output, MLP gate, up, down), the
  curvature along that kind's own gradient, gᵀHg / gᵀg with g restricted to the kind's matrices: how sharply the
  loss bends in the direction those matrices are being pushed;
- that kind's gradient RMS on the same batch, so curvature and gradient come from one measurement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..models.lab_lm import MATRIX_KINDS, lm_loss, parameter_kind
from ..store import RunResult
from ..validation import POSITIVE_INT, check_ranges
from .lab_lm import SMOKE, LabLMConfig, retrain_measuring
from .registry import Experiment, RunContext, register


@dataclass(frozen=True)
class SharpnessConfig:
    measure_at: tuple[int, ...] = (50, 150, 300, 600, 900, 1200, 1500)     # training steps (multiples of eval_every)
    windows: int = 32                 # held-out windows in the fixed batch the curvature is measured on
    power_iterations: int = 20
    smoke: bool = False               # the smoke lab LM (measured at its own eval steps) instead of the cpu one

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("windows", "power_iterations"), rules={"measure_at": POSITIVE_INT})

    def lab_lm(self) -> LabLMConfig:
        return SMOKE if self.smoke else LabLMConfig()


def hessian_vector_product(loss_grads: tuple[torch.Tensor, ...], params: list[torch.nn.Parameter],
                           vector: list[torch.Tensor]) -> list[torch.Tensor]:
    """H v for the loss whose gradients `loss_grads` were taken with create_graph=True (one double backward)."""
    return list(torch.autograd.grad(loss_grads, params, grad_outputs=vector, retain_graph=True))


def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b)))


def top_eigenvalue(loss_grads: tuple[torch.Tensor, ...], params: list[torch.nn.Parameter], iterations: int,
                   seed: int) -> float:
    """The Hessian's eigenvalue of largest size, by power iteration from a fixed random start (`seed`): the last
    iterate's Rayleigh quotient."""
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=generator).to(p.device) for p in params]
    eigenvalue = 0.0
    for _ in range(iterations):
        norm = dot(v, v) ** 0.5
        v = [x / norm for x in v]
        hv = hessian_vector_product(loss_grads, params, v)
        eigenvalue = dot(v, hv)
        v = [x.detach() for x in hv]
    return eigenvalue


@contextlib.contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Plain-PyTorch attention while inside: CPU's fused attention kernel has no double backward, and Hessian-vector
    products need one. The model's own kernel is restored on the way out, so training is untouched."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")            # as attention_formation's eager twin does
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def curvature_rows(model: torch.nn.Module, batch: torch.Tensor, iterations: int, seed: int) -> list[dict]:
    """The top Hessian eigenvalue and, per kind of weight matrix, the curvature along its own gradient and its
    gradient RMS, all on one batch (B, T + 1). Power iteration starts from a fixed random vector (`seed`)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    kinds = [parameter_kind(n)[1] for n, _ in named]
    with eager_attention(model):
        loss = lm_loss(model, batch)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        g = [x.detach() for x in grads]
        rows = [{"kind": "top eigenvalue", "curvature": top_eigenvalue(grads, params, iterations, seed),
                 "grad_rms": float("nan")}]
        for kind in MATRIX_KINDS:
            gk = [x if k == kind else torch.zeros_like(x) for x, k in zip(g, kinds)]
            hg = hessian_vector_product(grads, params, gk)
            numel = sum(x.numel() for x, k in zip(g, kinds) if k == kind)
            rows.append({"kind": kind, "curvature": dot(gk, hg) / dot(gk, gk),
                         "grad_rms": (dot(gk, gk) / numel) ** 0.5})
    return rows


def run(config: SharpnessConfig, ctx: RunContext) -> RunResult:
    lab = config.lab_lm()
    log = retrain_measuring(lab, config.measure_at, config.windows,
                            lambda model, batch: curvature_rows(model, batch, config.power_iterations, seed=lab.seed),
                            ctx, f"sharpness {ctx.label}")
    summary = {"final_val_loss": float(log.evals.val_loss.iloc[-1]), "measured_steps": sorted(set(config.measure_at))}
    return RunResult(tables={"curvature": log.custom_stats, "evals": log.evals[["step", "val_loss"]]},
                     summary=summary, seed=lab.seed)


register(Experiment(
    name="sharpness",
    title="Does the lab LM's loss surface sharpen where its late gradients grow?",
    track="Training dynamics",
    page="experiments/optimizer-state.qmd",
    version=1,
    config_type=SharpnessConfig,
    scales={"smoke": {"lab-lm": SharpnessConfig(measure_at=(10, 30), windows=4, power_iterations=5, smoke=True)},
            "cpu": {"lab-lm": SharpnessConfig()}},
    run=run,
    description="The lab LM retrained as stored; at seven steps, the top Hessian eigenvalue and, per kind of weight "
                "matrix, the curvature along its own gradient, on a fixed held-out batch.",
))
