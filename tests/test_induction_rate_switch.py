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
        (2e-3, 1e-3, 600), (2e-3, 1e-3, 800), (2e-3, 1e-3, 1000), (2e-3, 1e-3, 1200), (2e-3, 1e-3, 1400),
        (1e-3, 2e-3, 1000), (1e-3, 2e-3, 3000)}
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


def test_route_race_configs_are_the_stored_runs_cut_at_1600_steps():
    from labpy.experiments.route_race import RUNS

    configs = get_experiment("route_race").configs("cpu")
    assert set(configs) == set(RUNS)
    for label, config in configs.items():
        assert (config.lr, config.seed) == RUNS[label]
        assert dataclasses.replace(config, steps=6000, checkpoint_every=200, lr=1e-3, seed=0) == InductionConfig()
        assert config.checkpoint_steps() == tuple(range(0, 1601, 100))


def test_route_strengths_by_hand():
    """Two heads, one step: head 1 puts 0.30 on one back (uniform 0.10) and 0.02 on each of 6–15 back (uniform 0.01
    each); head 0 the reverse pattern, weaker. Layer 1: head 0 has +0.2 at offset 1, head 1 +0.01 on each of +3..+15."""
    import pandas as pd

    from labpy.experiments.induction_analysis import route_strengths

    layer0 = pd.DataFrame([{"step": 100, "head": h, "back": str(b), "uniform": 0.1 if b == 1 else 0.01,
                            "attention": (0.3 if h == 1 else 0.1) if b == 1 else (0.02 if h == 1 else 0.03)}
                           for h in (0, 1) for b in [1, *range(6, 16), "16 or more"] if b != "16 or more"]
                          + [{"step": 100, "head": 0, "back": "16 or more", "uniform": 0.5, "attention": 0.9}])
    layer1 = pd.DataFrame([{"step": 100, "head": h, "offset": str(k), "uniform": 0.02,
                            "attention": 0.02 + (0.2 if (h, k) == (0, 1) else 0.01 if h == 1 and k >= 3 else 0.0)}
                           for h in (0, 1) for k in range(-1, 16)])
    row = route_strengths(layer0, layer1).set_index("step").loc[100]
    assert row.l0_near == pytest.approx(0.2)                 # head 1: 0.3 − 0.1; the far bucket is not counted
    assert row.l0_far == pytest.approx(10 * 0.02)            # head 0: ten distances at 0.03 − 0.01
    assert row.l1_near == pytest.approx(0.2) and row.l1_far == pytest.approx(13 * 0.01)


def test_route_race_smoke_run_fills_the_route_tables(tmp_store):
    from labpy import results
    from labpy.experiments.induction_analysis import route_strengths

    run = results("route_race", "smoke")["lr-2e-03-s0"]
    strengths = route_strengths(run.table("layer0"), run.table("layer1"))
    assert strengths.step.tolist() == [s for s in run.config.checkpoint_steps() if s > 0]
    assert strengths[["l0_near", "l0_far", "l1_near", "l1_far"]].notna().all().all()
