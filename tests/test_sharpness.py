"""sharpness: Hessian-vector products and power iteration against a quadratic with a known Hessian, the curvature
along a gradient against a finite difference of gradients, and training that the measurements leave untouched."""

import dataclasses

import pytest
import torch

from labpy.models.lab_lm import MATRIX_KINDS, parameter_kind
from labpy.experiments.registry import RunContext, get_experiment
from labpy.experiments.sharpness import curvature_rows, dot, hessian_vector_product, top_eigenvalue
from labpy.models.lab_lm import lm_loss


def test_hvp_and_power_iteration_on_a_known_quadratic():
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]])                     # eigenvalues (5 ± √5) / 2
    x = torch.nn.Parameter(torch.tensor([0.3, -0.7]))
    loss = 0.5 * x @ a @ x
    grads = torch.autograd.grad(loss, [x], create_graph=True)
    v = torch.tensor([1.0, 2.0])
    assert hessian_vector_product(grads, [x], [v])[0].tolist() == pytest.approx((a @ v).tolist())
    assert top_eigenvalue(grads, [x], iterations=50, seed=0) == pytest.approx((5 + 5 ** 0.5) / 2, rel=1e-5)


def test_curvature_along_a_kind_matches_a_finite_difference(tmp_store):
    from labpy.experiments.lab_lm import SMOKE, build_corpus
    from labpy.models.lab_lm import build_lab_lm
    from labpy.tasks.corpus import eval_windows

    model = build_lab_lm(SMOKE.hf_config(), 0).double()
    batch = eval_windows(build_corpus(SMOKE).val, SMOKE.seq_len, 128)[:4]
    rows = {r["kind"]: r for r in curvature_rows(model, batch, iterations=3, seed=0)}
    assert set(rows) == {"top eigenvalue", *MATRIX_KINDS}
    named = list(model.named_parameters())
    params = [p for _, p in named]
    mask = [parameter_kind(n)[1] == "up_proj" for n, _ in named]
    g = torch.autograd.grad(lm_loss(model, batch), params)
    direction = [x if m else torch.zeros_like(x) for x, m in zip(g, mask)]
    eps = 1e-2                      # the step is eps·g, about 1e-5 per entry; lm_loss scores in float32

    def grad_at(sign: float) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
        out = torch.autograd.grad(lm_loss(model, batch), params)
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
        return out

    plus, minus = grad_at(1.0), grad_at(-1.0)
    hd = [(a - b) / (2 * eps) for a, b in zip(plus, minus)]
    finite = dot(direction, hd) / dot(direction, direction)
    assert rows["up_proj"]["curvature"] == pytest.approx(finite, rel=1e-2)
    numel = sum(p.numel() for p, m in zip(params, mask) if m)
    assert rows["up_proj"]["grad_rms"] == pytest.approx((dot(direction, direction) / numel) ** 0.5, rel=1e-6)


def test_measuring_leaves_training_as_the_lab_lm_trains(tmp_path):
    lab_lm = get_experiment("lab_lm")
    reference = lab_lm.run(lab_lm.configs("smoke")["base"], RunContext(work_dir=tmp_path / "lab_lm"))
    experiment = get_experiment("sharpness")
    result = experiment.run(experiment.configs("smoke")["lab-lm"], RunContext(work_dir=tmp_path / "sharp"))
    assert result.summary["final_val_loss"] == pytest.approx(reference.summary["final_val_loss"], abs=1e-6)
    curvature = result.tables["curvature"]
    assert sorted(curvature.step.unique()) == [10, 30] and len(curvature) == 2 * (1 + len(MATRIX_KINDS))
    with pytest.raises(ValueError, match="windows"):
        dataclasses.replace(experiment.configs("smoke")["lab-lm"], windows=0)
