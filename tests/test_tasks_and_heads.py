import pandas as pd
import pytest
import torch

from labpy.interp.capture import capture
from labpy.interp.heads import (head_scores_table, induction_scores, patterns_with_head_ablated,
                                previous_token_scores)
from labpy.models.toy import ToyTransformerConfig, build_toy_transformer
from labpy.tasks.repeated_tokens import RepeatedSegmentTask, repeated_random_tokens, sample


def test_repeated_segment_is_copied_and_masks_point_at_it():
    task = RepeatedSegmentTask(vocab=50, seq_len=64, min_segment=6, max_segment=24)
    batch = sample(task, 200, torch.Generator().manual_seed(0))
    first, repeat = batch.target_masks()
    assert batch.tokens.shape == (200, 64) and first.shape == repeat.shape == (200, 63)
    for i in range(200):
        s, L = int(batch.segment_start[i]), int(batch.segment_len[i])
        assert 6 <= L <= 24 and s + 2 * L <= 64
        assert torch.equal(batch.tokens[i, s:s + L], batch.tokens[i, s + L:s + 2 * L])
        # target t (mask column t-1) is predictable iff t in (s+L, s+2L): its token repeats token t-L
        predictable = [t for t in range(1, 64) if repeat[i, t - 1]]
        assert predictable == list(range(s + L + 1, s + 2 * L))
        assert all(batch.tokens[i, t] == batch.tokens[i, t - L] for t in predictable)
        assert int(first[i].sum()) == L - 1
    assert len(set(batch.segment_len.tolist())) > 10  # lengths vary: no positional shortcut


def test_bad_task_shape_is_named():
    with pytest.raises(ValueError, match="max_segment=40, seq_len=64"):
        RepeatedSegmentTask(seq_len=64, max_segment=40)


def test_scores_of_ideal_patterns_by_hand():
    T, L = 8, 4
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    for t in range(1, T):
        prev[t, t - 1] = 1
    ind = torch.eye(T)
    for i in range(L, T):
        ind[i] = 0
        ind[i, i - L + 1] = 1
    patterns = torch.stack([prev, ind]).reshape(1, 1, 2, T, T)  # (layers=1, B=1, H=2, T, T)
    assert previous_token_scores(patterns).tolist() == [[1.0, pytest.approx(0.0)]]
    assert induction_scores(patterns, L)[0, 1].item() == 1.0
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1).unsqueeze(1)
    score = induction_scores(uniform.reshape(1, 1, 1, T, T), L)[0, 0].item()
    assert score == pytest.approx(sum(1 / (i + 1) for i in range(L, T)) / L)


@pytest.fixture(scope="module")
def model():
    return build_toy_transformer(ToyTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=20,
                                                      n_ctx=16), seed=0)


def test_capture_shapes_and_pattern_matches_hand_computation(model):
    tokens = torch.randint(0, 20, (3, 10), generator=torch.Generator().manual_seed(1))
    logits, patterns, residual = capture(model, tokens)
    assert logits.shape == (3, 10, 20) and patterns.shape == (2, 3, 4, 10, 10) and residual.shape == (3, 3, 10, 32)
    torch.testing.assert_close(logits, model(tokens))
    # independent reference: the pattern of layer 0 from W_Q, W_K and the normalised residual
    _, cache = model.run_with_cache(tokens)
    x = cache["blocks.0.ln1.hook_out"]
    q = torch.einsum("btd,hde->bhte", x, model.W_Q[0]) + model.b_Q[0][None, :, None, :]
    k = torch.einsum("btd,hde->bhte", x, model.W_K[0]) + model.b_K[0][None, :, None, :]
    scores = (q @ k.transpose(-1, -2)) / 8 ** 0.5
    scores = scores.masked_fill(torch.triu(torch.ones(10, 10, dtype=torch.bool), 1), float("-inf"))
    torch.testing.assert_close(patterns[0], scores.softmax(-1))
    # the residual stream adds up: resid_post of layer 0 = resid_pre + attention output
    torch.testing.assert_close(residual[1], residual[0] + cache["blocks.0.hook_attn_out"])


def test_ablating_a_head_equals_zeroing_its_output_weights(model):
    tokens = torch.randint(0, 20, (2, 12), generator=torch.Generator().manual_seed(2))
    ablated = patterns_with_head_ablated(model, tokens, layer=0, head=2)
    reference = build_toy_transformer(ToyTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8,
                                                           d_vocab=20, n_ctx=16), seed=0)
    with torch.no_grad():
        reference.blocks[0].attn.o.weight[:, 2 * 8:3 * 8] = 0.0  # o.weight is (d_model, n_heads*d_head)
    _, expected, _ = capture(reference, tokens)
    torch.testing.assert_close(ablated, expected)
    # layer 0's own pattern is untouched; layer 1's changes
    _, intact, _ = capture(model, tokens)
    torch.testing.assert_close(ablated[0], intact[0])
    assert (ablated[1] - intact[1]).abs().max() > 1e-4


def test_head_scores_table_rows(model):
    tokens = repeated_random_tokens(4, 6, 20, torch.Generator().manual_seed(3))
    assert tokens.shape == (4, 12) and torch.equal(tokens[:, :6], tokens[:, 6:])
    table = head_scores_table(model, tokens, half=6)
    assert isinstance(table, pd.DataFrame) and len(table) == 8
    assert table.label.tolist()[:2] == ["L0H0", "L0H1"]
    assert table[["previous_token", "induction"]].apply(lambda c: c.between(0, 1).all()).all()
