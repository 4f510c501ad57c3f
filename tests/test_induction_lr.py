"""induction_lr: three rates of the four-head model, nothing else changed from the stored `induction` run, and a
smoke run whose tables fill."""

import dataclasses

import pytest

from labpy.experiments.induction import InductionConfig
from labpy.experiments.induction_lr import RATES
from labpy.experiments.registry import get_experiment


def test_cpu_configs_differ_from_the_stored_run_only_in_the_rate():
    configs = get_experiment("induction_lr").configs("cpu")
    assert sorted(c.lr for c in configs.values()) == sorted(RATES) and 1e-3 not in RATES
    for config in configs.values():
        assert dataclasses.replace(config, lr=1e-3) == InductionConfig()


def test_smoke_run_fills_the_tables(tmp_store):
    from labpy import results

    run = results("induction_lr", "smoke")["lr-4e-03"]
    assert run.config.lr == pytest.approx(4e-3)
    evals, scores = run.table("evals"), run.table("scores")
    assert evals.step.iloc[0] == 0 and evals.step.iloc[-1] == run.config.steps
    assert sorted(scores.step.unique()) == list(run.config.checkpoint_steps())
    assert set(run.table("ablations").zeroed) >= {"none", "L1H0", "L1H3"}
