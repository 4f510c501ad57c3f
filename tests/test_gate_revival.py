"""gate_revival: the swap test's open shares against a hand loop and against the model's own gate pre-activations,
the reference it keeps for a resumed run, and its configs against gate_death's."""

import dataclasses

import pytest
import torch

from labpy.experiments.gate_death import GateDeathConfig
from labpy.experiments.gate_revival import (REFERENCE_FILE, GateRevivalConfig, mlp_inputs, open_share,
                                            revival_probe, swap_rows)
from labpy.experiments.lab_lm import SMOKE
from labpy.experiments.registry import RunContext, get_experiment
from labpy.interp.hf_hooks import run_with_cache
from labpy.models.lab_lm import build_lab_lm
from labpy.train import StatsContext


def relu_model(seed: int = 3):
    hf = SMOKE.hf_config()
    hf.hidden_act = "relu"
    return build_lab_lm(hf, seed=seed).eval()


def test_open_share_and_swap_rows_by_hand():
    w_old = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    w_new = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    x_old = torch.tensor([[-1.0, 0.5], [-1.0, 2.0], [1.0, 1.0], [2.0, -1.0]])
    x_new = torch.tensor([[1.0, -3.0], [1.0, 1.0], [-1.0, -1.0], [-2.0, 3.0]])
    assert open_share(w_old, x_old).tolist() == [0.5, 0.25]
    rows = swap_rows(w_old, x_old, w_new, x_new, layer=2, neurons=torch.tensor([0, 1]))
    # neuron 0: w_new·x_new = [-2, 2, -2, 1] -> 2/4; w_old·x_new = [1, 1, -1, -2] -> 2/4; w_new·x_old = [-.5, 1, 2, 1]
    assert [r["open_now"] for r in rows] == [0.5, 0.5]
    assert [r["open_old_weights_new_inputs"] for r in rows] == [0.5, 0.5]
    assert [r["open_new_weights_old_inputs"] for r in rows] == [0.75, 0.25]
    assert rows[0]["weight_cosine"] == pytest.approx(2 ** -0.5)
    assert rows[1]["weight_cosine"] == pytest.approx(1.0) and rows[1]["weight_length_ratio"] == pytest.approx(2.0)
    assert {r["layer"] for r in rows} == {2} and [r["neuron"] for r in rows] == [0, 1]


def test_mlp_inputs_times_gate_weights_are_the_gate_pre_activations():
    model = relu_model()
    windows = torch.randint(0, SMOKE.vocab_size, (3, 13))
    inputs = mlp_inputs(model, windows)
    with torch.no_grad():
        _, cache = run_with_cache(model, windows[:, :-1], lambda n: n.endswith("mlp.hook_pre"))
    for l, layer in enumerate(model.model.layers):
        pre = cache[f"blocks.{l}.mlp.hook_pre"][:, 1:].reshape(-1, SMOKE.intermediate_size)   # position 0 left out
        assert torch.allclose(inputs[l] @ layer.mlp.gate_proj.weight.T, pre, atol=1e-5)


def test_probe_follows_the_dead_neurons_and_survives_a_resume(tmp_path):
    config = GateRevivalConfig(smoke=True, dead_step=10, gate_steps=(10, 20))
    model = relu_model()
    with torch.no_grad():                       # kill neuron 5 of layer 1 outright: w = 0 opens on no token
        model.model.layers[1].mlp.gate_proj.weight[5] = 0.0
    windows = torch.randint(0, SMOKE.vocab_size, (4, 17))
    probe = revival_probe(config, tmp_path)
    assert probe(StatsContext(model, None, 10, 0.0, {}), windows) == []
    assert (tmp_path / REFERENCE_FILE).is_file()
    rows = revival_probe(config, tmp_path)(StatsContext(model, None, 20, 0.0, {}), windows)     # a fresh probe: resumed
    assert (1, 5) in {(r["layer"], r["neuron"]) for r in rows}
    followed = {(r["layer"], r["neuron"]) for r in rows}
    x = mlp_inputs(model, windows)
    for l, layer in enumerate(model.model.layers):
        dead = torch.nonzero(open_share(layer.mlp.gate_proj.weight, x[l]) < 0.01).flatten().tolist()
        assert {n for ll, n in followed if ll == l} == set(dead)
    assert all(r["open_now"] == r["open_old_weights_new_inputs"] == r["open_new_weights_old_inputs"]
               for r in rows)                   # nothing moved between the two calls
    assert all(r["weight_cosine"] == pytest.approx(1.0) for r in rows if (r["layer"], r["neuron"]) != (1, 5))
    with pytest.raises(RuntimeError, match="delete the run's work folder"):
        revival_probe(config, tmp_path / "elsewhere")(StatsContext(model, None, 20, 0.0, {}), windows)


def test_configs_repeat_gate_deaths_relu_run_with_only_the_decay_changed():
    configs = get_experiment("gate_revival").configs("cpu")
    assert dataclasses.replace(configs["relu"], weight_decay=0.0) == configs["relu-no-decay"]
    gd = configs["relu"].gate_death()
    assert dataclasses.replace(gd, gate_steps=GateDeathConfig().gate_steps) == get_experiment("gate_death").configs(
        "cpu")["relu"]
    assert set(GateDeathConfig().gate_steps) <= set(gd.gate_steps)
    assert configs["relu"].weight_decay == gd.lab_lm().weight_decay
    with pytest.raises(ValueError, match="dead_step"):
        GateRevivalConfig(dead_step=150)


def test_smoke_run_stores_swap_rows_after_the_dead_step(tmp_path):
    experiment = get_experiment("gate_revival")
    config = experiment.configs("smoke")["relu-no-decay"]
    result = experiment.run(config, RunContext(work_dir=tmp_path))
    revival = result.tables["revival"]
    assert len(revival) and revival.step.min() > config.dead_step
    assert not result.tables["gates_in_training"].isna().any().any()
    assert result.summary["weight_decay"] == 0.0
