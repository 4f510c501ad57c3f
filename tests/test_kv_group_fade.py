"""kv_group_fade: attention distances against hand-built patterns and numpy, the query–key circuit against the
model's own projections, the within/across means by hand, and the smoke run."""

import numpy as np
import pytest
import torch

from labpy.experiments.kv_group_fade import KVGroupFadeConfig, pattern_distances, qk_circuits, within_across
from labpy.interp.hf_hooks import heads
from labpy.models.lm import load_lm


def _causal_softmax(scores: torch.Tensor) -> torch.Tensor:
    T = scores.shape[-1]
    return scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)


def test_distances_match_numpy_and_see_past_the_first_key():
    g = torch.Generator().manual_seed(0)
    pattern = _causal_softmax(torch.randn(2, 3, 6, 6, generator=g))                  # (B, H, T, T)
    d = pattern_distances(pattern, drop_first_key=False)
    p = pattern.numpy()
    assert d[0, 1].item() == pytest.approx(0.5 * np.abs(p[:, 0, 1:] - p[:, 1, 1:]).sum(-1).mean())
    assert torch.all(d.diagonal() == 0) and torch.equal(d, d.T)
    # head 2 = head 0 with more attention parked on key 0 and the rest scaled down alike
    parked = pattern.clone()
    parked[:, 2, :, 1:] = pattern[:, 0, :, 1:] * 0.5
    parked[:, 2, :, 0] = 1 - parked[:, 2, :, 1:].sum(-1)
    assert pattern_distances(parked, drop_first_key=True)[0, 2].item() == pytest.approx(0.0, abs=1e-6)   # float32 pattern
    assert pattern_distances(parked, drop_first_key=False)[0, 2].item() > 0.1


def test_within_across_by_hand():
    m = torch.tensor([[0.0, 1, 2, 3], [1, 0, 4, 5], [2, 4, 0, 6], [3, 5, 6, 0]])
    assert within_across(m, torch.tensor([0, 0, 1, 1])) == (pytest.approx((1 + 6) / 2), pytest.approx((2 + 3 + 4 + 5) / 4))


def test_qk_circuit_is_the_bias_free_query_key_product(tmp_store):
    model, _ = load_lm("lab-lm:smoke")
    n_heads, n_kv, head_dim = heads(model)
    attn = model.model.layers[1].self_attn
    circuits = qk_circuits(attn, n_heads, n_kv, head_dim).unflatten(1, (model.config.hidden_size, -1))   # (H, d, d)
    x, y = torch.randn(2, model.config.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    q = (x @ attn.q_proj.weight.double().T).unflatten(0, (n_heads, head_dim))
    k = (y @ attn.k_proj.weight.double().T).unflatten(0, (n_kv, head_dim))
    for h in range(n_heads):
        assert (x @ circuits[h] @ y).item() == pytest.approx((q[h] @ k[h // (n_heads // n_kv)]).item(), rel=1e-9)


def test_smoke_run_covers_every_layer(tmp_store):
    from labpy import results

    entry = results("kv_group_fade", "smoke")["lab-lm"]
    patterns = entry.table("patterns")
    assert len(patterns) == 2 * entry.summary["n_layers"]
    assert patterns.sink_share.between(0, 1).all()
    assert patterns[["distance_within", "distance_across", "no_sink_within", "no_sink_across"]].stack().between(0, 1).all()
    assert len(entry.table("circuits")) == entry.summary["n_layers"]
    with pytest.raises(ValueError, match="seq_len=2"):
        KVGroupFadeConfig(seq_len=2)


def test_a_query_whose_attention_is_all_on_the_first_token_is_skipped():
    pattern = torch.zeros(1, 2, 4, 4)
    pattern[:, :, :, 0] = 1.0                                        # every query parks everything on key 0
    pattern[0, :, 3] = torch.tensor([0.5, 0.5, 0.0, 0.0])            # except the last, which also reads key 1
    pattern[0, 1, 3] = torch.tensor([0.2, 0.0, 0.8, 0.0])            # head 1 reads key 2 instead
    assert pattern_distances(pattern, drop_first_key=True)[0, 1].item() == pytest.approx(1.0)   # disjoint, finite
