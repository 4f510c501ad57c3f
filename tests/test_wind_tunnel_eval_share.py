"""wind_tunnel_eval_share: the evaluation count matches what `train` actually evaluates, and the projection adds up."""

import dataclasses

import pytest

from labpy.experiments.registry import RunContext, get_experiment
from labpy.experiments.wind_tunnel_eval_share import EvalShareConfig, evaluations


def test_evaluation_count_matches_the_training_loop(tmp_path):
    wind = get_experiment("wind_tunnels")
    config = dataclasses.replace(wind.configs("smoke")["bijection-mlp-s0"], steps=25, eval_every=10)
    result = wind.run(config, RunContext(work_dir=tmp_path / "wt"))
    assert len(result.tables["evals"]) == evaluations(config) == 4          # steps 0, 10, 20 and the last, 25
    assert evaluations(dataclasses.replace(config, steps=30)) == 4          # 0, 10, 20, 30


def test_smoke_timings_add_up(tmp_path):
    experiment = get_experiment("wind_tunnel_eval_share")
    timings = experiment.run(experiment.configs("smoke")["smoke"], RunContext(work_dir=tmp_path)).tables["timings"]
    assert sorted(timings.run) == sorted(l for l in get_experiment("wind_tunnels").configs("smoke") if l.endswith("-s0"))
    for row in timings.itertuples():
        assert row.projected_steps_s == pytest.approx(row.steps * row.step_s)
        assert row.projected_eval_s == pytest.approx(row.evaluations * row.eval_s + row.final_eval_s + row.lengths_eval_s)
        assert 0 < row.eval_share < 1
    assert (timings.lengths_eval_s > 0).sum() == 1                           # only the HMM transformer has them
    with pytest.raises(ValueError, match="timed_steps"):
        EvalShareConfig(timed_steps=0)
