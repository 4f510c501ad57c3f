"""high_rate_damage: each reset undoes what it names and nothing else, the diagnosis against a hand count, and a run
whose arms pick up where `frozen_escape`'s frozen model stops."""

import dataclasses

import pytest
import torch

from labpy.experiments.high_rate_damage import EMBEDDING, RESETS, diagnosis, reset
from labpy.experiments.registry import RunContext, get_experiment


def _model_and_states():
    from labpy.experiments.lr_sweep import SMOKE
    from labpy.models.lab_lm import build_lab_lm, lab_lm_config

    config = lab_lm_config(SMOKE["vocab_size"], hidden_size=SMOKE["hidden_size"], num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, intermediate_size=SMOKE["intermediate_size"])
    model = build_lab_lm(config, 0)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3).add_(0.01)                                      # a changed model, larger than at the start
    return model, initial, {n: p.detach().clone() for n, p in model.named_parameters()}


def test_each_reset_undoes_what_it_names():
    for how in RESETS:
        model, initial, changed = _model_and_states()
        reset(model, initial, how)
        for name, p in model.named_parameters():
            if how == "embedding reset":
                assert torch.equal(p, initial[name] if name == EMBEDDING else changed[name])
            elif how == "all but the embedding reset":
                assert torch.equal(p, changed[name] if name == EMBEDDING else initial[name])
            elif p.dim() == 2:                                        # weights rescaled: the RMS back, direction kept
                assert float(p.detach().pow(2).mean().sqrt()) == pytest.approx(
                    float(initial[name].pow(2).mean().sqrt()), rel=1e-5)
                assert torch.allclose(p.detach() / p.norm(), changed[name] / changed[name].norm(), atol=1e-6)
            else:
                assert torch.equal(p, changed[name])                  # norm gains and biases are left alone
    with pytest.raises(ValueError, match="reset 'nothing'"):
        reset(*_model_and_states()[:2], "nothing")


def test_diagnosis_against_a_closed_layer_and_uniform_attention():
    """All of layer 0's gates zeroed: none ever opens (a gate is open where its pre-activation is above 0). Layer 1's
    queries zeroed: every row attends uniformly over its causal prefix, so its entropy is log(t + 1) at position t."""
    import math

    model, _, _ = _model_and_states()
    windows = torch.randint(1, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.model.layers[0].mlp.gate_proj.weight.zero_()
        model.model.layers[1].self_attn.q_proj.weight.zero_()
        model.model.layers[1].self_attn.q_proj.bias.zero_()
    rows = {(r["measure"], r["part"]): r["value"] for r in diagnosis(model, windows, "test")}
    assert rows["gates never open", "layer 0"] == 1.0 and rows["gates never open", "layer 1"] < 1.0
    positions = windows.shape[1] - 1                                  # inputs; row 0 is left out
    uniform = sum(math.log(t + 1) for t in range(1, positions)) / (positions - 1)
    assert rows["attention entropy", "layer 1"] == pytest.approx(uniform, rel=1e-5)
    assert model.config._attn_implementation != "eager"               # the eager switch was undone


def test_run_picks_up_where_the_frozen_model_stops(tmp_path):
    damage = get_experiment("high_rate_damage")
    config = damage.configs("smoke")["lr-0.1"]
    result = damage.run(config, RunContext(work_dir=tmp_path / "damage"))
    escape = get_experiment("frozen_escape").run(config.escape(), RunContext(work_dir=tmp_path / "escape"))
    frozen_end = escape.tables["evals"].query("arm == 'frozen, then lowered'").set_index("step").val_loss
    evals = result.tables["evals"]
    steps = config.escape().sweep().steps
    embedding_reset = evals[evals.arm == "embedding reset"].set_index("step").val_loss
    assert set(evals.arm) == set(RESETS) and embedding_reset.index.min() == steps
    reset_rest = evals[evals.arm == "all but the embedding reset"].set_index("step").val_loss
    assert reset_rest[steps] != pytest.approx(frozen_end[steps], abs=1e-3)  # each arm starts from its own reset
    assert evals.groupby("arm").step.max().eq(steps + config.extra_steps).all()
    states = set(result.tables["diagnosis"].state)
    assert states == {"initialisation", "frozen"}
    with pytest.raises(ValueError, match="probe_windows"):
        dataclasses.replace(config, probe_windows=0)
