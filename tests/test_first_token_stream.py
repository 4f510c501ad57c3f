"""first_token_stream: neuron shares add up to the MLP's write (a hand identity), the write rebuilt from the neurons
is the model's own `hook_mlp_out`, zeroing a write at position 0 changes nothing before it, and the smoke tables."""

import pytest
import torch

from labpy.experiments.first_token_stream import FirstTokenConfig, neuron_shares, zero_write
from labpy.interp.hf_hooks import run_with_cache
from labpy.models.lm import load_lm


def test_neuron_shares_sum_to_one_and_rank_by_size():
    g = torch.Generator().manual_seed(0)
    post, w_down = torch.randn(4, 5, 6, generator=g), torch.randn(3, 6, generator=g)
    every = neuron_shares(post, w_down, top=6)
    assert every.share.sum() == pytest.approx(1.0, abs=1e-5)
    assert every.share.abs().is_monotonic_decreasing
    # by hand for one window: a_i (w_i . w_hat) / |write|
    one = neuron_shares(post[:1], w_down, top=6).set_index("neuron").share
    write = w_down @ post[0, 0]
    by_hand = post[0, 0] * (w_down.T @ (write / write.norm())) / write.norm()
    assert one.sort_index().tolist() == pytest.approx(by_hand.tolist(), abs=1e-5)


def test_the_write_is_the_models_own_and_zeroing_it_changes_nothing_before(tmp_store):
    model, _ = load_lm("lab-lm:smoke")
    tokens = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(3))
    names = ["blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    _, clean = run_with_cache(model, tokens, names)
    rebuilt = clean["blocks.1.mlp.hook_post"] @ model.model.layers[1].mlp.down_proj.weight.T
    assert torch.allclose(rebuilt, clean["blocks.1.hook_mlp_out"], atol=1e-5)
    _, knocked = run_with_cache(model, tokens, names, fwd_hooks=[("blocks.1.hook_mlp_out", zero_write(slice(0, 1)))])
    assert torch.equal(knocked["blocks.0.hook_resid_post"], clean["blocks.0.hook_resid_post"])
    after = knocked["blocks.1.hook_resid_post"] - clean["blocks.1.hook_resid_post"]
    assert torch.allclose(after[:, 0], -clean["blocks.1.hook_mlp_out"][:, 0], atol=1e-5)
    assert torch.equal(after[:, 1:], torch.zeros_like(after[:, 1:]))   # the last block: nothing later reads it


def test_smoke_run_tables(tmp_store):
    from labpy import results

    entry = results("first_token_stream", "smoke")["lab-lm"]
    writes, sink, neurons = entry.table("writes"), entry.table("sink"), entry.table("neurons")
    n_layers = entry.summary["n_layers"]
    assert len(writes) == 2 * n_layers and (writes.drop(columns=["kind", "layer"]) >= 0).all().all()
    up_to_jump = sink[sink.layer <= entry.config.jump_layer]
    assert (up_to_jump.clean - up_to_jump.knocked).abs().max() < 1e-6      # layers before the write cannot change
    assert set(neurons.kind) == {"prose", "code"} and (neurons.groupby("kind").size() == entry.config.top_neurons).all()
    assert set(entry.table("knockouts")["zeroed at"]) == {"position 0", "positions 1.."}
    with pytest.raises(ValueError, match="jump_layer"):
        FirstTokenConfig(jump_layer=-1)
