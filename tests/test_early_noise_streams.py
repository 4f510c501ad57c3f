"""early_noise_streams: the noisy run to its lift, then on from its own weights and moments on another batch stream.
With the run's own stream it must be `early_noise`'s `noisy-long` (itself `dropout_lifted`'s lifted run) step for
step; with another, it must part from it at the first step after the lift and not before."""

from __future__ import annotations

from dataclasses import replace

import pytest

from labpy.errors import ConfigError
from labpy.experiments.early_noise_streams import StreamConfig
from labpy.experiments.registry import get_experiment, run_config

SMOKE = get_experiment("early_noise_streams").scales["smoke"]


def _losses(entry):
    return entry.table("steps").set_index("step").loss


def test_the_runs_own_stream_is_the_lifted_run_and_another_stream_parts_from_it_at_the_lift(tmp_store):
    config = SMOKE["lifted-800-stream-1"]
    own = run_config(get_experiment("early_noise_streams"), "smoke", "own", replace(config, after_seed=config.seed),
                     store=tmp_store)
    other = run_config(get_experiment("early_noise_streams"), "smoke", "other", config, store=tmp_store)
    reference = run_config(get_experiment("early_noise"), "smoke", "noisy-long",
                           get_experiment("early_noise").scales["smoke"]["noisy-long"], store=tmp_store)
    lift, end = config.lifted_at, config.lifted_at + config.steps
    assert _losses(own).loc[lift + 1:end].tolist() == _losses(reference).loc[lift + 1:end].tolist()
    assert _losses(other).loc[lift + 1] != _losses(own).loc[lift + 1]
    assert other.summary["after_seed"] == 1 and sorted(other.table("checkpoint_regions").step.unique())[0] == lift


@pytest.mark.parametrize("changes, message", [
    ({"after_seed": -1}, r"StreamConfig\.after_seed = -1 is out of range; it must be a seed"),
    ({"clean_weights": ("",)}, r"StreamConfig\.clean_weights = \('',\) must be left unset: these runs go on from"),
    ({"fresh_optimizer": True}, r"StreamConfig\.fresh_optimizer = True must be left unset"),
])
def test_a_stream_run_that_is_not_the_noisy_run_alone_is_one_clear_line(changes, message):
    with pytest.raises(ConfigError, match=message):
        StreamConfig(**changes)
