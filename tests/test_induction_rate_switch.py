"""induction_rate_switch: the four-head model with its rate changed once, or another seed, and nothing else changed
from the stored `induction` run; a bad switch is named; a smoke run's tables fill."""

import dataclasses

import pytest

from labpy.experiments.induction import InductionConfig
from labpy.experiments.induction_rate_switch import RateSwitchConfig
from labpy.experiments.registry import get_experiment
from labpy.train import lr_at


def test_cpu_configs_change_only_the_rate_the_switch_or_the_seed():
    configs = get_experiment("induction_rate_switch").configs("cpu")
    for label, config in configs.items():
        base = {f.name: getattr(config, f.name) for f in dataclasses.fields(InductionConfig)}
        assert InductionConfig(**{**base, "lr": 1e-3, "seed": 0}) == InductionConfig(), label
        spec = config.train_spec()
        before, after = (config.lr, config.lr) if config.switch_step is None else (config.lr, config.lr_after)
        step = config.switch_step or 3000
        assert (lr_at(spec, step - 1), lr_at(spec, step), lr_at(spec, config.steps - 1)) == (before, after, after)
    assert {(c.lr, c.lr_after, c.switch_step) for c in configs.values() if c.switch_step} == {
        (2e-3, 1e-3, 600), (2e-3, 1e-3, 1400), (1e-3, 2e-3, 1000), (1e-3, 2e-3, 3000)}
    assert {(c.lr, c.seed) for c in configs.values() if c.switch_step is None} == {(2e-3, 1), (2e-3, 2), (1e-3, 2)}


@pytest.mark.parametrize("changes, message", [
    ({"switch_step": 1000}, r"RateSwitchConfig.lr_after = None must be set together with switch_step \(it is 1000\)"),
    ({"switch_step": 50, "lr_after": 1e-3}, r"switch_step = 50 must fall after the warm-up .*100 < switch_step < 6000"),
    ({"switch_step": 1000, "lr_after": 0.0}, r"RateSwitchConfig.lr_after = 0.0 is out of range"),
])
def test_bad_switch_is_named(changes, message):
    with pytest.raises(ValueError, match=message):
        RateSwitchConfig(**changes)


def test_smoke_run_fills_the_tables(tmp_store):
    from labpy import results

    run = results("induction_rate_switch", "smoke")["down-at-600"]
    assert (run.config.lr, run.config.lr_after) == (2e-3, 1e-3)
    evals, scores = run.table("evals"), run.table("scores")
    assert evals.step.iloc[-1] == run.config.steps
    assert sorted(scores.step.unique()) == list(run.config.checkpoint_steps())
    assert set(run.table("ablations").zeroed) >= {"none", "L1H0", "L1H3"}
