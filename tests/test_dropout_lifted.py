"""dropout_lifted: the dropout run of `dropout_layers`, step for step, until its lift; then training without it."""

from __future__ import annotations

import pytest

from labpy.errors import ConfigError
from labpy.experiments.dropout_lifted import DropoutLiftedConfig
from labpy.experiments.registry import get_experiment, run_config


def test_dropout_is_on_for_the_first_lifted_at_steps_only():
    config = DropoutLiftedConfig(dropout=0.05, dropout_layers=(1, 2), steps=50, lifted_at=20)
    assert [config.dropout_on(step) for step in (0, 19, 20, 49)] == [True, True, False, False]


@pytest.mark.parametrize("lifted_at", [0, 50, 70])
def test_a_lift_outside_the_run_is_one_clear_line(lifted_at):
    with pytest.raises(ConfigError, match=rf"DropoutLiftedConfig\.lifted_at = {lifted_at} is out of range; it must be a "
                                          r"step between 1 and steps - 1 = 49"):
        DropoutLiftedConfig(steps=50, lifted_at=lifted_at)


def test_a_lifted_run_is_the_dropout_run_until_its_lift_then_parts_from_it(tmp_store):
    lifted_experiment, layers_experiment = get_experiment("dropout_lifted"), get_experiment("dropout_layers")
    config = lifted_experiment.scales["smoke"]["lifted-2000-s0"]
    reference_config = layers_experiment.scales["smoke"]["output-layers12-p005-long-s0"]   # never lifted
    assert (config.dropout, config.dropout_layers, config.seed) == (reference_config.dropout,
                                                                    reference_config.dropout_layers, 0)
    assert config.steps <= reference_config.steps
    lifted = run_config(lifted_experiment, "smoke", "lifted-2000-s0", config, store=tmp_store)
    reference = run_config(layers_experiment, "smoke", "output-layers12-p005-long-s0", reference_config,
                           store=tmp_store)
    loss, reference_loss = (entry.table("steps").set_index("step").loss for entry in (lifted, reference))
    lift = config.lifted_at                      # the log counts steps from 1: logged step s trained on batch s - 1
    assert loss.loc[1:lift].tolist() == reference_loss.loc[1:lift].tolist()      # the same masks, data and weights
    assert loss.loc[lift + 1] != reference_loss.loc[lift + 1]                     # the first step without dropout
    assert lifted.summary["lifted_at"] == lift and not lifted.checkpoint_names()

    regions = lifted.table("checkpoint_regions")
    assert sorted(regions.step.unique()) == list(config.checkpoint_steps())
    assert (regions.groupby("step").region.apply(set) == {"first copy", "repeat, unambiguous",
                                                          "repeat, ambiguous"}).all()
    final = regions[regions.step == config.steps].set_index("region").loss      # the final model, measured twice
    assert final.to_dict() == pytest.approx(lifted.table("regions").set_index("region").loss.to_dict(), abs=1e-6)
