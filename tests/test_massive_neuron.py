"""massive_neuron: the knockouts by position add up, the sink shares are read from the pattern the way a hand
computation reads them, the logit writes match a direct computation, and the smoke run's tables hold together."""

import pytest
import torch

from labpy.experiments.massive_neuron import MassiveNeuronConfig, logit_writes, sink_share, zero_at
from labpy.interp.hf_hooks import run_with_cache
from labpy.models.lm import load_lm


def test_zeroing_by_position_touches_only_those_positions(tmp_store):
    model, _ = load_lm("lab-lm:smoke")
    tokens = torch.randint(0, 200, (2, 9), generator=torch.Generator().manual_seed(2))
    name = "blocks.1.mlp.hook_post"
    _, clean = run_with_cache(model, tokens, [name])
    _, first = run_with_cache(model, tokens, [name], fwd_hooks=[(name, zero_at(4, slice(0, 1)))])
    changed = (first[name] != clean[name])
    assert changed[:, 0, 4].all() and changed.sum() == 2          # one neuron at position 0 of both windows
    _, rest = run_with_cache(model, tokens, [name], fwd_hooks=[(name, zero_at(4, slice(1, None)))])
    assert (rest[name][:, 1:, 4] == 0).all() and torch.equal(rest[name][:, 0], clean[name][:, 0])


def test_sink_share_leaves_position_0_out():
    pattern = torch.zeros(1, 2, 3, 3)
    pattern[0, :, 0, 0] = 1                                        # position 0 attends to itself: left out
    pattern[0, 0, 1:, 0] = torch.tensor([0.5, 0.25])
    pattern[0, 1, 1:, 0] = torch.tensor([0.0, 1.0])
    shares = sink_share({"blocks.3.attn.hook_pattern": pattern}, range(3, 4))
    assert shares == {(3, 0): pytest.approx(0.375), (3, 1): pytest.approx(0.5)}


def test_logit_writes_are_w_down_through_the_norm_gain_and_the_unembedding(tmp_store):
    """Against a hand computation with the HF modules: lm_head(W_down[:, n] * final norm gain), top and bottom k."""
    model, tokenizer = load_lm("lab-lm:smoke")
    writes = logit_writes(model, tokenizer, layer=1, neuron=7, top_k=3)
    with torch.no_grad():
        by_hand = model.lm_head(model.model.layers[1].mlp.down_proj.weight[:, 7] * model.model.norm.weight)  # (V,)
    assert list(writes.direction) == ["raised"] * 3 + ["lowered"] * 3
    expected = torch.cat([by_hand.sort(descending=True).values[:3], by_hand.sort().values[:3]])
    assert writes.logit_per_unit.tolist() == pytest.approx(expected.tolist(), rel=1e-5)


def test_smoke_run_tables(tmp_store):
    from labpy import results

    entry = results("massive_neuron", "smoke")["lab-lm"]
    c = entry.config
    positions, knockouts, sink = entry.table("positions"), entry.table("knockouts"), entry.table("sink")
    assert len(positions) == 2 * c.seq_len and (positions.mean_abs >= positions["mean"].abs() - 1e-9).all()
    assert len(entry.table("stream")) == 2 * entry.summary["n_layers"]
    ko = knockouts.set_index(["kind", "knockout"])
    at_0 = c.seq_len * ko.delta_loss - (c.seq_len - 1) * ko.delta_loss_after_0      # the loss change at position 0
    for kind in ("prose", "code"):
        # causality: position 0's prediction sees only position 0, so zeroing the neuron everywhere changes it exactly
        # as zeroing it at position 0 alone does, and zeroing it at positions 1.. leaves it alone
        assert at_0[kind, "everywhere"] == pytest.approx(at_0[kind, "position 0 only"], abs=1e-4)
        assert at_0[kind, "positions 1.. only"] == pytest.approx(0, abs=1e-4)
        assert ko.loc[(kind, "positions 1.. only"), "delta_loss_after_0"] != 0
    assert sink[["clean", "knocked"]].stack().between(0, 1).all()
    assert set(sink.layer) == set(range(c.layer + 1, entry.summary["n_layers"]))
    with pytest.raises(ValueError, match="neuron"):
        MassiveNeuronConfig(neuron=-1)
