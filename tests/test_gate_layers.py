"""gate_layers: the input statistics by hand, and the probe's per-layer rows against the model's own tensors."""

import pytest
import torch

from labpy.experiments.gate_layers import GateLayersConfig, layer_probe, mean_share
from labpy.experiments.gate_revival import mlp_inputs
from labpy.experiments.lab_lm import SMOKE
from labpy.experiments.registry import RunContext, get_experiment
from labpy.models.lab_lm import build_lab_lm
from labpy.train import StatsContext


def test_mean_share_by_hand():
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    assert mean_share(same) == pytest.approx(1.0)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert mean_share(opposite) == pytest.approx(0.0)
    # mean (1, 1), ‖mean‖² = 2; ‖x‖² = 4 and 4 -> 2 / 4
    assert mean_share(torch.tensor([[2.0, 0.0], [0.0, 2.0]])) == pytest.approx(0.5)


def test_probe_rows_match_the_model():
    hf = SMOKE.hf_config()
    hf.hidden_act = "relu"
    model = build_lab_lm(hf, seed=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    windows = torch.randint(0, SMOKE.vocab_size, (3, 13))
    loss = model(input_ids=windows[:, :-1], labels=windows[:, 1:]).loss
    loss.backward()
    optimizer.step()
    config = GateLayersConfig(smoke=True, gate_steps=(1, 2), align_step=2)
    probe = layer_probe(config)
    first = probe(StatsContext(model, optimizer, 1, 1e-3, {}), windows)
    assert [r["layer"] for r in first] == [0, 1] and all(r["input_moved"] != r["input_moved"] for r in first)  # NaN
    second = probe(StatsContext(model, optimizer, 2, 1e-3, {}), windows)
    layers = [r for r in second if r["record"] == "layer"]
    assert all(r["input_moved"] == pytest.approx(0.0) for r in layers)          # nothing changed between the calls
    x = mlp_inputs(model, windows)
    for r in layers:
        w = model.model.layers[r["layer"]].mlp.gate_proj.weight
        assert r["input_mean_share"] == pytest.approx(mean_share(x[r["layer"]]))
        assert r["gate_grad_rms"] == pytest.approx(float(w.grad.pow(2).mean().sqrt()))
        assert r["gate_adam_step"] == pytest.approx(1e-3, rel=0.01)              # Adam's first step: lr per entry
    neurons = [r for r in second if r["record"] == "neuron"]
    assert len(neurons) == hf.num_hidden_layers * hf.intermediate_size
    assert all(-1 <= r["cos_with_input_mean"] <= 1 for r in neurons)
    with pytest.raises(ValueError, match="align_step"):
        GateLayersConfig(align_step=7)


def test_smoke_run_splits_its_records(tmp_path):
    experiment = get_experiment("gate_layers")
    config = experiment.configs("smoke")["relu"]
    result = experiment.run(config, RunContext(work_dir=tmp_path))
    assert sorted(result.tables["layers"].step.unique()) == list(config.gate_steps)
    assert set(result.tables["neurons"].step) == {config.align_step}
    assert "record" not in result.tables["gates_in_training"]
