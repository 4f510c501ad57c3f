"""early_noise: two runs to the lift, one with dropout and one without, and a run on from a mixture of the two.

The references are the runs the mixture must reproduce when it takes everything from one side: `dropout_lifted`'s
run lifted at the same step (the noisy side) and `attention_depth`'s run without dropout (the clean side), each
trained from initialisation in one go."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from labpy.errors import ConfigError
from labpy.experiments.attention_depth import DepthConfig
from labpy.experiments.dropout_lifted import DropoutLiftedConfig
from labpy.experiments.early_noise import (EarlyNoiseConfig, LiftState, mixed_moments, mixed_weights,
                                           parameter_names, phase_key, state_at_lift)
from labpy.experiments.registry import get_experiment, run_config

SMOKE = get_experiment("early_noise").scales["smoke"]


def _losses(entry):
    return entry.table("steps").set_index("step").loss


def test_the_noisy_sides_weights_and_moments_continue_the_lifted_run_step_for_step(tmp_store):
    config = SMOKE["noisy-long"]                        # nothing from the clean run
    lift = config.lifted_at
    reference_config = DropoutLiftedConfig(**{f: getattr(config, f) for f in (
        "dropout", "dropout_layers", "seed", "warmup_steps", "eval_every", "eval_batch", "score_batch",
        "checkpoint_every")}, lifted_at=lift, steps=lift + 30)
    reference = run_config(get_experiment("dropout_lifted"), "smoke", "lifted-reference", reference_config,
                           store=tmp_store)
    mixed = run_config(get_experiment("early_noise"), "smoke", "noisy-long", config, store=tmp_store)
    loss, reference_loss = _losses(mixed), _losses(reference)
    assert loss.index.min() == lift + 1                 # the log counts on from the lift
    assert loss.loc[lift + 1:lift + 30].tolist() == reference_loss.loc[lift + 1:lift + 30].tolist()
    regions = mixed.table("checkpoint_regions")
    assert sorted(regions.step.unique()) == [lift + s for s in config.checkpoint_steps()]
    assert mixed.summary["start_step"] == lift and not mixed.checkpoint_names()


def test_the_clean_sides_weights_and_moments_continue_the_run_without_dropout(tmp_store):
    config = SMOKE["clean"]
    lift = config.lifted_at
    reference_config = DepthConfig(**{f: getattr(config, f) for f in (
        "seed", "warmup_steps", "eval_every", "eval_batch", "score_batch", "checkpoint_every")}, steps=lift + 20)
    reference = run_config(get_experiment("attention_depth"), "smoke", "clean-reference", reference_config,
                           store=tmp_store)
    mixed = run_config(get_experiment("early_noise"), "smoke", "clean", replace(config, steps=20), store=tmp_store)
    assert _losses(mixed).loc[lift + 1:].tolist() == _losses(reference).loc[lift + 1:].tolist()


def test_the_two_sides_differ_at_the_lift_and_are_told_apart(tmp_store):
    entry = run_config(get_experiment("early_noise"), "smoke", "clean-moments", SMOKE["clean-moments"],
                       store=tmp_store)
    state = entry.table("lift_state").set_index("parameter")
    assert list(state.index) == parameter_names(SMOKE["clean"])
    assert (state.weight_change[state.index.str.startswith("blocks.")] > 0).all()   # dropout changed the gradients
    assert set(entry.table("lift_scores").run) == set(entry.table("lift_regions").run) == {"noisy", "clean"}


def _state(value: float, names: list[str]) -> LiftState:
    weights = {name: torch.full((2,), value) for name in names}
    moments = {i: {"step": torch.tensor(5.0), "exp_avg": torch.full((2,), value),
                   "exp_avg_sq": torch.full((2,), value ** 2)} for i in range(len(names))}
    return LiftState(weights, {"state": moments, "param_groups": [{"params": list(range(len(names))), "lr": 1e-3}]})


def test_a_mixture_takes_each_tensor_from_the_side_its_name_says():
    names = parameter_names(SMOKE["clean"])
    noisy, clean = _state(1.0, names), _state(2.0, names)
    weights = mixed_weights(noisy, clean, ("blocks.1.", "unembed."))
    moments = mixed_moments(noisy, clean, ("blocks.0.",), names)
    for i, name in enumerate(names):
        expected_weight = 2.0 if name.startswith(("blocks.1.", "unembed.")) else 1.0
        expected_moment = 2.0 if name.startswith("blocks.0.") else 1.0
        assert weights[name][0].item() == expected_weight, name
        assert moments["state"][i]["exp_avg"][0].item() == expected_moment, name
    assert mixed_weights(noisy, clean, ("",))[names[0]][0].item() == 2.0      # "" names every parameter


def test_the_cached_runs_at_the_lift_are_not_changed_by_training_on_from_them(tmp_store):
    config = replace(SMOKE["clean-moments"], steps=10)        # the noisy run's weights, the clean run's moments
    key = phase_key(config)
    noisy, clean = state_at_lift(key, True), state_at_lift(key, False)
    moments = {i: s["exp_avg"].clone() for i, s in clean.optimizer["state"].items()}
    weights = {k: v.clone() for k, v in noisy.weights.items()}
    run_config(get_experiment("early_noise"), "smoke", "short", config, store=tmp_store)
    assert all(torch.equal(clean.optimizer["state"][i]["exp_avg"], m) for i, m in moments.items())
    assert all(torch.equal(noisy.weights[k], w) for k, w in weights.items())


@pytest.mark.parametrize("changes, message", [
    ({"clean_weights": ("blocks.3.",)},
     r"EarlyNoiseConfig\.clean_weights = \('blocks\.3\.',\) names \['blocks\.3\.'\], not a part of the model; use "
     r"prefixes from"),
    ({"fresh_optimizer": True, "clean_moments": ("",)}, r"clean_moments = \('',\) must be empty when fresh_optimizer"),
    ({"lifted_at": 50}, r"lifted_at = 50 is out of range; the lift must come after the warm-up \(warmup_steps = 100\)"),
])
def test_bad_mixtures_are_one_clear_line(changes, message):
    with pytest.raises(ConfigError, match=message):
        EarlyNoiseConfig(**changes)
