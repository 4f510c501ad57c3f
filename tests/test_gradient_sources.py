"""gradient_sources: the four factors multiply out to the gradient, against autograd and a hand computation, and
measuring leaves training as the lab LM trains."""

import dataclasses

import pytest
import torch

from labpy.experiments.gradient_sources import LINEAR_KINDS, factor_row, gradient_factors
from labpy.experiments.registry import RunContext, get_experiment


def test_factors_multiply_out_to_the_gradient_by_hand():
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0]])          # ‖x_t‖ = 5, 1
    g = torch.tensor([[1.0], [-2.0]])                   # ‖g_t‖ = 1, 2; G = Σ g_t x_tᵀ = [[3, 2]]
    row = factor_row(x, g)
    assert row["grad_rms"] == pytest.approx((13 / 2) ** 0.5)
    assert row["input_size"] == pytest.approx(3.0) and row["backward_size"] == pytest.approx(2 * 1.5)
    assert row["pairing"] == pytest.approx(3.5 / (3.0 * 1.5))          # mean ‖g‖‖x‖ = (5 + 2) / 2
    assert row["coherence"] == pytest.approx(13 ** 0.5 / 7)
    product = row["coherence"] * row["pairing"] * row["input_size"] * row["backward_size"]
    assert product / 2 ** 0.5 == pytest.approx(row["grad_rms"])        # ‖G‖ / √(out·in)


def test_factor_rows_match_autograd_for_every_matrix(tmp_store):
    from labpy.experiments.lab_lm import SMOKE, build_corpus
    from labpy.models.lab_lm import build_lab_lm, lm_loss
    from labpy.tasks.corpus import eval_windows

    model = build_lab_lm(SMOKE.hf_config(), 0)
    batch = eval_windows(build_corpus(SMOKE).val, SMOKE.seq_len, 128)[:4]
    rows = gradient_factors(model, batch)
    assert [(r["layer"], r["kind"]) for r in rows] == [(i, k) for i in range(SMOKE.n_layers) for k in LINEAR_KINDS]
    lm_loss(model, batch).backward()
    for r in rows:
        layer = model.model.layers[r["layer"]]
        weight = getattr(layer.self_attn if hasattr(layer.self_attn, r["kind"]) else layer.mlp, r["kind"]).weight
        assert r["grad_rms"] == pytest.approx(float(weight.grad.pow(2).mean().sqrt()), rel=1e-5)
        product = r["coherence"] * r["pairing"] * r["input_size"] * r["backward_size"]
        assert product / weight.numel() ** 0.5 == pytest.approx(r["grad_rms"], rel=1e-5)
        assert 0 < r["coherence"] <= 1 + 1e-6


def test_measuring_leaves_training_as_the_lab_lm_trains(tmp_path):
    lab_lm = get_experiment("lab_lm")
    reference = lab_lm.run(lab_lm.configs("smoke")["base"], RunContext(work_dir=tmp_path / "lab_lm"))
    experiment = get_experiment("gradient_sources")
    result = experiment.run(experiment.configs("smoke")["lab-lm"], RunContext(work_dir=tmp_path / "sources"))
    assert result.summary["final_val_loss"] == pytest.approx(reference.summary["final_val_loss"], abs=1e-6)
    factors, weights = result.tables["factors"], result.tables["weights"]
    assert sorted(factors.step.unique()) == [10, 30] and factors.autograd_gap.max() < 1e-5
    assert weights.weight_rms.notna().all() and "model.layers.0.post_attention_layernorm.weight" in set(weights.name)
    with pytest.raises(ValueError, match="windows"):
        dataclasses.replace(experiment.configs("smoke")["lab-lm"], windows=0)
