"""next_state: the self-expectation against the model run by hand on each candidate, R² against scikit-learn, and a
run's invariants."""

import dataclasses

import numpy as np
import pytest
import torch


def test_r2_is_sklearns_variance_weighted_r2():
    from sklearn.metrics import r2_score

    from labpy.experiments.next_state import r2

    rng = np.random.default_rng(0)
    target = rng.normal(size=(40, 5)) * [1, 2, 3, 4, 5]
    prediction = target + rng.normal(size=(40, 5))
    assert r2(prediction, target) == pytest.approx(r2_score(target, prediction, multioutput="variance_weighted"))


def test_self_expectation_matches_the_model_run_on_each_candidate(tmp_store):
    from labpy import results
    from labpy.experiments.next_state import expected_next_states, states
    from labpy.models.lm import load_lm

    entry = results("next_state", "smoke")["lab-lm"]
    model, _ = load_lm(entry.config.model)
    tokens = torch.randint(1, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    all_states, log_probs = states(model, tokens)
    expected, guessed = expected_next_states(model, tokens, log_probs, top_k=3)
    assert expected.shape == (model.config.num_hidden_layers + 1, 2, 4, model.config.hidden_size)
    t, b = 2, 1                                                  # position 2 of window 1: third column of the output
    top = log_probs[b, t].topk(3)
    by_hand = torch.zeros_like(expected[:, b, t - 1])
    weights = top.values.exp() / top.values.exp().sum()
    for w, v in zip(weights, top.indices):
        with torch.no_grad():
            candidate = states(model, torch.cat([tokens[b, :t + 1], v[None]])[None])[0][:, 0, -1]
        by_hand += w * candidate
        if v == top.indices[0]:
            assert torch.allclose(guessed[:, b, t - 1], candidate, atol=1e-5)
    assert torch.allclose(expected[:, b, t - 1], by_hand, atol=1e-5)
    # with one candidate the expectation is the top guess; if the guess is the true token, it is the true state
    one, top1 = expected_next_states(model, tokens, log_probs, top_k=1)
    assert torch.allclose(one, top1)
    hits = log_probs[:, 1:-1].argmax(-1) == tokens[:, 2:]                               # (B, T - 2)
    true_next = all_states[:, :, 2:]
    assert torch.allclose(top1[:, hits], true_next[:, hits], atol=1e-4)


def test_run_keeps_its_invariants(tmp_store):
    from labpy import results

    entry = results("next_state", "smoke")["lab-lm"]
    table = entry.table("r2")
    n_layers = entry.summary["n_layers"]
    assert sorted(table.layer.unique()) == list(range(-1, n_layers))
    whole = table[table.positions == "all"]
    assert len(whole) == 2 * (n_layers + 1) * 5 and (whole.r2 <= 1 + 1e-9).all()
    split = table[table.positions != "all"].groupby(["kind", "layer", "predictor"]).n.sum()
    assert (split == whole[whole.predictor.isin(["self-expectation", "its top guess"])]
            .set_index(["kind", "layer", "predictor"]).n.reindex(split.index)).all()
    with pytest.raises(ValueError, match="n_windows=1"):
        dataclasses.replace(entry.config, n_windows=1)
