"""first_token_writers: zeroing a list of neurons against zeroing their down-projection columns, the stream ratio by
hand, and a run's invariants."""

import dataclasses

import pytest
import torch


def test_zeroing_two_neurons_is_zeroing_their_columns(tmp_store):
    from labpy import results
    from labpy.experiments.massive_neuron import zero_at
    from labpy.interp.hf_hooks import run_with_hooks
    from labpy.models.lm import load_lm

    entry = results("first_token_writers", "smoke")["lab-lm"]
    model, _ = load_lm(entry.config.model)
    tokens = torch.randint(1, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    hooked = run_with_hooks(model, tokens, [("blocks.0.mlp.hook_post", zero_at([1, 2], slice(None)))])
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, [1, 2]] = 0
        by_weights = model(tokens).logits
    assert torch.allclose(hooked, by_weights, atol=1e-5)


def test_first_ratio_by_hand():
    from labpy.experiments.first_token_writers import first_ratio

    stream = torch.zeros(3, 4, 2)
    stream[:, 0, 0] = torch.tensor([30.0, 60.0, 90.0])            # position 0: norms 30, 60, 90 -> median 60
    stream[:, 1:, 1] = 2.0                                        # elsewhere: all 2
    assert first_ratio(stream) == pytest.approx(30.0)


def test_run_keeps_its_invariants(tmp_store):
    from labpy import results

    entry = results("first_token_writers", "smoke")["lab-lm"]
    table = entry.table("knockouts")
    assert set(table.knockout) == {"none", "L0.1 alone", "L0.2 alone", "L0.1, L0.2 together", "block 0's whole MLP write"}
    assert len(table) == 2 * (1 + 4 * 2) and table.late_sink.between(0, 1).all()
    clean = table[table.knockout == "none"]
    assert (clean.delta_loss == 0).all()
    with pytest.raises(ValueError, match="neurons"):
        dataclasses.replace(entry.config, neurons=(-1,))
