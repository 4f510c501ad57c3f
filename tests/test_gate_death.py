"""gate_death: the gate statistics it records in training, against a forward hook on gate_proj computed by hand,
and the retrained model's config against the lab LM's."""

import dataclasses

import pytest
import torch

from labpy.experiments.gate_death import GateDeathConfig, gate_probe
from labpy.experiments.lab_lm import LabLMConfig, SMOKE
from labpy.experiments.registry import RunContext, get_experiment
from labpy.models.lab_lm import build_lab_lm
from labpy.train import StatsContext


def test_only_the_activation_differs_from_the_lab_lm():
    experiment = get_experiment("gate_death")
    configs = experiment.configs("cpu")
    assert {c.hidden_act for c in configs.values()} == {"relu", "silu"}
    assert all(c.lab_lm() == LabLMConfig() for c in configs.values())
    assert dataclasses.replace(configs["relu"], hidden_act="silu") == configs["silu"]
    with pytest.raises(ValueError, match="hidden_act"):
        GateDeathConfig(hidden_act="gelu")


def test_gate_probe_matches_a_hook_on_gate_proj():
    hf = SMOKE.hf_config()
    hf.hidden_act = "relu"
    model = build_lab_lm(hf, seed=3).eval()
    windows = torch.randint(0, hf.vocab_size, (4, 17))
    seen = {}
    handles = [layer.mlp.gate_proj.register_forward_hook(lambda m, a, out, l=l: seen.__setitem__(l, out.detach()))
               for l, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(input_ids=windows[:, :-1])
    for h in handles:
        h.remove()
    rows = gate_probe(windows, (5,))(StatsContext(model, None, 5, 0.0, {}))
    assert gate_probe(windows, (5,))(StatsContext(model, None, 6, 0.0, {})) == []          # only at its steps
    assert [r["layer"] for r in rows] == list(range(hf.num_hidden_layers))
    for r in rows:
        pre = seen[r["layer"]][:, 1:].reshape(-1, hf.intermediate_size)                      # position 0 left out
        per_neuron = (pre > 0).float().mean(0)
        assert r["open_share"] == pytest.approx(float((pre > 0).float().mean()))
        assert r["rarely_open"] == pytest.approx(float((per_neuron < 0.01).float().mean()))
        assert r["step"] == 5


def test_smoke_run_records_gates_in_training_and_after(tmp_path):
    experiment = get_experiment("gate_death")
    config = experiment.configs("smoke")["relu"]
    result = experiment.run(config, RunContext(work_dir=tmp_path))
    during = result.tables["gates_in_training"]
    assert sorted(during.step.unique()) == list(config.gate_steps)
    assert set(result.tables["gates"].kind) == {"prose", "code"}
    assert result.summary["hidden_act"] == "relu" and 0 < result.summary["final_val_loss"] < 10
