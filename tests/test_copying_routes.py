"""copying_routes: the attention tables against attention patterns built by hand (a previous-token head and an
induction head put all their attention on one known key), and a smoke run."""

import pytest
import torch

from labpy.experiments import copying_routes
from labpy.experiments.induction import EVAL_SEED, InductionConfig
from labpy.tasks.repeated_tokens import sample
from labpy.train import step_generator


def test_routes_of_a_hand_built_induction_circuit(monkeypatch):
    """Layer 0, head 0 attends to the previous token, head 1 to itself; layer 1, head 0 attends from each repeat query
    to the token after the earlier occurrence, head 1 to the query itself."""
    config = InductionConfig(n_heads=2, eval_batch=16)
    batch = sample(config.task(), config.eval_batch, step_generator(EVAL_SEED, config.seed))
    B, T = batch.tokens.shape
    patterns = torch.zeros(2, B, 2, T, T)
    t = torch.arange(T)
    patterns[0, :, 0, t, (t - 1).clamp(min=0)] = 1.0
    patterns[0, :, 1, t, t] = 1.0
    patterns[1, :, 1, t, t] = 1.0
    for b in range(B):
        s, L = int(batch.segment_start[b]), int(batch.segment_len[b])
        for q in range(T):
            key = q - L + 1 if s + L <= q < s + 2 * L else 0
            patterns[1, b, 0, q, key] = 1.0
    monkeypatch.setattr(copying_routes, "attention_patterns", lambda model, tokens: patterns)
    layer0, layer1 = copying_routes.attention_routes(None, config)
    l0 = layer0.set_index(["head", "back"]).attention
    assert l0[(0, "1")] == pytest.approx(1.0) and l0[(0, "0")] == pytest.approx(0.0)
    assert l0[(1, "0")] == pytest.approx(1.0) and l0[(1, f"{len(copying_routes.BACK)} or more")] == pytest.approx(0.0, abs=1e-6)
    l1 = layer1.set_index(["head", "offset"]).attention
    assert l1[(0, "1")] == pytest.approx(1.0) and l1[(0, "0")] == pytest.approx(0.0)
    assert l1[(0, "elsewhere")] == pytest.approx(0.0, abs=1e-6)
    # head 1 attends to the query itself, L past the earlier occurrence: offset L when L ≤ 15, else elsewhere
    _, repeat = batch.target_masks()
    rows, _ = repeat.nonzero(as_tuple=True)
    lengths = batch.segment_len[rows]
    for k in range(6, 16):
        assert l1[(1, str(k))] == pytest.approx(float((lengths == k).float().mean()), abs=1e-6)
    assert l1[(1, "elsewhere")] == pytest.approx(float((lengths > 15).float().mean()), abs=1e-6)
    # uniform attention over q + 1 visible keys: its share of one key is 1 / (q + 1) on average
    assert 0 < layer1.uniform[layer1.offset == "1"].iloc[0] < 1 / (config.min_segment + 1)


def test_smoke_run_stores_the_route_tables(tmp_store):
    from labpy import results

    run = results("copying_routes", "smoke")["heads-2-s0"]
    layer0, layer1 = run.table("layer0"), run.table("layer1")
    assert len(layer0) == 2 * (len(copying_routes.BACK) + 1) and len(layer1) == 2 * (len(copying_routes.AROUND) + 1)
    for table in (layer0, layer1):      # each head's attention, over the buckets, sums to one
        assert table.groupby("head").attention.sum().tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert not run.checkpoint_names()
