"""gradient_growth: with the cosine schedule and weight decay 0.1 it is the lab LM's own training, step for step, so
each run removes exactly one suspect; the stored table keeps the weight matrices only."""

import dataclasses

import pandas as pd
import pytest

from labpy.experiments.gradient_growth import GradientGrowthConfig
from labpy.experiments.lab_lm import LabLMConfig
from labpy.experiments.lab_lm_analysis import growth, median_over_matrices
from labpy.experiments.registry import RunContext, get_experiment


def test_each_run_changes_one_thing_from_the_lab_lm():
    configs = get_experiment("gradient_growth").configs("cpu")
    assert configs["constant-lr"].lab_lm() == dataclasses.replace(LabLMConfig(), schedule="constant")
    assert configs["no-weight-decay"].lab_lm() == dataclasses.replace(LabLMConfig(), weight_decay=0.0)
    with pytest.raises(ValueError, match="schedule"):
        GradientGrowthConfig(schedule="linear")
    with pytest.raises(ValueError, match="weight_decay"):
        GradientGrowthConfig(weight_decay=-0.1)


def test_defaults_reproduce_the_lab_lm_smoke_run(tmp_path):
    lab_lm = get_experiment("lab_lm")
    reference = lab_lm.run(lab_lm.configs("smoke")["base"], RunContext(work_dir=tmp_path / "lab_lm"))
    experiment = get_experiment("gradient_growth")
    smoke = experiment.configs("smoke")["constant-lr"]
    same = experiment.run(dataclasses.replace(smoke, schedule="cosine"), RunContext(work_dir=tmp_path / "same"))
    constant = experiment.run(smoke, RunContext(work_dir=tmp_path / "constant"))
    assert same.summary["final_val_loss"] == pytest.approx(reference.summary["final_val_loss"], abs=1e-5)
    assert abs(constant.summary["final_val_loss"] - reference.summary["final_val_loss"]) > 1e-4
    # the kept rows are the lab LM's own statistics for its weight matrices: no norms, no biases
    full = reference.tables["param_stats"].set_index(["step", "name"])
    kept = same.tables["matrix_stats"].set_index(["step", "name"])
    assert not kept.index.get_level_values("name").str.contains("norm").any()
    matrices = {n for n in full.index.get_level_values("name") if n.endswith(".weight") and "norm" not in n}
    assert set(kept.index.get_level_values("name")) == matrices and len(matrices) == 15   # embedding + 2 × 7
    pd.testing.assert_series_equal(kept.grad_rms, full.loc[kept.index].grad_rms, atol=1e-7, rtol=1e-5)
    assert (same.tables["steps"].step % 10 == 0).all()


def test_median_over_matrices_and_growth_by_hand():
    params = pd.DataFrame({"step": [150, 150, 150, 150, 300, 300, 300],
                           "name": ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
                                    "model.layers.1.mlp.up_proj.weight", "model.layers.0.input_layernorm.weight"] * 1
                                   + ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
                                      "model.layers.0.input_layernorm.weight"],
                           "grad_rms": [1.0, 2.0, 4.0, 100.0, 3.0, 5.0, 100.0]})
    medians = median_over_matrices(params)            # the norm weights are left out
    assert medians.grad_rms.to_dict() == pytest.approx({150: 2.0, 300: 4.0})
    assert growth(medians.grad_rms, 150) == pytest.approx(2.0)
