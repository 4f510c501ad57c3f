"""neuron_knockouts: the linear estimate against a hand computation and against a finite difference, the true
knockouts against zeroing the neuron's down-projection column, and a run's invariants."""

import dataclasses

import pytest
import torch


def test_estimate_is_minus_activation_times_gradient_and_near_a_small_knockout(tmp_store):
    from labpy import results
    from labpy.experiments.neuron_knockouts import activations_and_estimates, scored_loss
    from labpy.models.lm import load_lm

    entry = results("neuron_knockouts", "smoke")["lab-lm"]
    model, _ = load_lm(entry.config.model)
    model = model.double()
    tokens = torch.randint(1, model.config.vocab_size, (2, 9))
    loss, acts, estimates = activations_and_estimates(model, tokens, [1])
    n = int(estimates[1].abs().argmax())
    # a hand central difference: scale the neuron by (1 ± eps) through its down-projection column (the loss is
    # scored in float32, so eps is large enough for the change to stand well above its rounding)
    eps = 0.05
    down = model.model.layers[1].mlp.down_proj.weight
    scaled = {}
    with torch.no_grad():
        original = down[:, n].clone()
        for sign in (1, -1):
            down[:, n] = original * (1 + sign * eps)
            scaled[sign] = float(scored_loss(model(tokens[:, :-1]).logits, tokens))
        down[:, n] = original
    assert estimates[1][n].item() == pytest.approx(-(scaled[1] - scaled[-1]) / (2 * eps), rel=2e-2)
    with torch.no_grad():
        assert loss == pytest.approx(float(scored_loss(model(tokens[:, :-1]).logits, tokens)), rel=1e-9)


def test_run_keeps_its_invariants_and_its_knockouts_match_a_zeroed_column(tmp_store):
    from labpy import results
    from labpy.experiments.neuron_knockouts import scored_loss
    from labpy.models.lm import load_lm
    from labpy.tasks.source_code import prose_and_code_windows

    entry = results("neuron_knockouts", "smoke")["lab-lm"]
    config = entry.config
    tested, estimates = entry.table("tested"), entry.table("estimates")
    assert len(tested) == len(config.layers) * (config.tested_top + config.tested_random)
    for layer, mine in tested.groupby("layer"):
        top = mine[mine.role == "top by estimate"]
        best = estimates[estimates.layer == layer].sort_values("rank")
        assert top.neuron.tolist() == best.neuron.tolist()[:config.tested_top]        # the estimate's own ranking
        assert set(mine[mine.role == "random"].neuron).isdisjoint(top.neuron)
    assert tested.loud_rank.between(1, entry.summary["n_neurons"]).all()
    # one stored knockout again, by zeroing the neuron's column of the down projection instead of a hook
    row = tested.iloc[0]
    model, tokenizer = load_lm(config.model)
    texts = prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1)
    with torch.no_grad():
        base = float(scored_loss(model(texts["code"][:, :-1]).logits, texts["code"]))
        model.model.layers[int(row.layer)].mlp.down_proj.weight[:, int(row.neuron)] = 0
        knocked = float(scored_loss(model(texts["code"][:, :-1]).logits, texts["code"]))
    assert row.cost_code == pytest.approx(knocked - base, abs=1e-6)
    with pytest.raises(ValueError, match="tested_top"):
        dataclasses.replace(config, tested_top=0)
