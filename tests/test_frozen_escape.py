"""frozen_escape: its first phase is the learning-rate sweep's run step for step, the arms share what they should,
and its config is checked."""

import dataclasses

import pytest

from labpy.experiments.registry import RunContext, get_experiment


def test_first_phase_is_the_sweep_run_and_the_arms_line_up(tmp_path):
    experiment = get_experiment("frozen_escape")
    config = experiment.configs("smoke")["lr-0.1"]
    result = experiment.run(config, RunContext(work_dir=tmp_path / "escape"))
    sweep = get_experiment("lr_sweep")
    reference = sweep.run(dataclasses.replace(config.sweep(), seeds=config.seeds), RunContext(work_dir=tmp_path / "sweep"))
    curves = result.tables["evals"]
    steps = config.sweep().steps
    frozen = curves[curves.arm == "frozen, then lowered"].set_index("step").val_loss
    assert frozen[steps] == pytest.approx(reference.tables["seeds"].final_val_loss.iloc[0], abs=1e-6)
    assert frozen.index.max() == steps + config.extra_steps and frozen.index.is_unique
    fresh = curves[curves.arm == "fresh at the low rate"].set_index("step").val_loss
    assert fresh.index.min() == steps and fresh[steps] == pytest.approx(result.summary["uniform_loss"], abs=0.05)
    longer = curves[curves.arm == "a longer cosine from the high rate"].set_index("step").val_loss
    assert longer.index.max() == steps + config.extra_steps
    with pytest.raises(ValueError, match="low_lr"):
        dataclasses.replace(config, low_lr=0)


def test_high_rate_decay_is_the_sweep_run_with_another_decay(tmp_path):
    decay = get_experiment("high_rate_decay")
    sweep = get_experiment("lr_sweep")
    for label, config in decay.configs("cpu").items():
        assert config == dataclasses.replace(sweep.configs("cpu")["lr_1e-01"], weight_decay=config.weight_decay)
        assert config.weight_decay > 0.1 and label == f"wd-{config.weight_decay:g}"
    smoke = decay.configs("smoke")["wd-3"]
    result = decay.run(smoke, RunContext(work_dir=tmp_path / "decay"))
    plain = sweep.run(dataclasses.replace(smoke, weight_decay=0.1), RunContext(work_dir=tmp_path / "plain"))
    assert (result.tables["seeds"].final_val_loss != plain.tables["seeds"].final_val_loss).all()   # decay acts
