"""adam_beta2: with β₂ = 0.999 it is the lab LM's own training, step for step, so the experiment changes β₂ and
nothing else; with 0.95 the recorded second moments forget faster."""

import dataclasses

import pytest

from labpy.experiments.adam_beta2 import AdamBeta2Config
from labpy.experiments.lab_lm import LabLMConfig
from labpy.experiments.registry import RunContext, get_experiment


def test_only_beta2_differs_from_the_lab_lm():
    config = get_experiment("adam_beta2").configs("cpu")["beta2-0.95"]
    assert config.lab_lm() == LabLMConfig() and config.beta2 == 0.95
    with pytest.raises(ValueError, match="beta2"):
        AdamBeta2Config(beta2=1.0)


def test_beta2_0999_reproduces_the_lab_lm_smoke_run(tmp_path):
    lab_lm = get_experiment("lab_lm")
    reference = lab_lm.run(lab_lm.configs("smoke")["base"], RunContext(work_dir=tmp_path / "lab_lm"))
    experiment = get_experiment("adam_beta2")
    smoke = experiment.configs("smoke")["beta2-0.95"]
    same = experiment.run(dataclasses.replace(smoke, beta2=0.999), RunContext(work_dir=tmp_path / "same"))
    shorter = experiment.run(smoke, RunContext(work_dir=tmp_path / "shorter"))
    assert same.summary["final_val_loss"] == pytest.approx(reference.summary["final_val_loss"], abs=1e-5)
    assert shorter.summary["betas"] == [0.9, 0.95]
    assert abs(shorter.summary["final_val_loss"] - reference.summary["final_val_loss"]) > 1e-4
    # the training loss of step 1 does not depend on β₂ (same weights, same batch); later ones do
    a, b = same.tables["steps"].set_index("step").loss, shorter.tables["steps"].set_index("step").loss
    assert a[1] == pytest.approx(b[1], abs=1e-6) and (a - b).abs().max() > 1e-4
    stats = shorter.tables["param_stats"]
    assert {"snr", "sqrt_v_mean", "step_mean"} <= set(stats.columns) and stats.step.nunique() > 2


def test_attention_mlp_snr_averages_kinds_over_layers_first():
    import pandas as pd

    from labpy.experiments.lab_lm_analysis import attention_mlp_snr
    params = pd.DataFrame({"step": [1, 1, 1, 1, 2], "kind": ["q_proj", "q_proj", "down_proj", "embedding", "q_proj"],
                           "snr": [0.2, 0.4, 0.9, 5.0, 0.1]})
    # step 1: q_proj's two layers average to 0.3, down_proj 0.9 -> 0.6; the embedding is left out
    assert attention_mlp_snr(params).to_dict() == pytest.approx({1: 0.6, 2: 0.1})
