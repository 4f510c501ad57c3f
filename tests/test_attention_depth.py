"""attention_depth: ambiguity of a one-token match, direct against total effects, dropout through hooks."""

from __future__ import annotations

import pytest
import torch

from labpy.errors import ConfigError
from labpy.experiments import attention_depth as depth
from labpy.experiments import attention_depth_analysis as ada
from labpy.interp import ambiguity
from labpy.interp.composition import composition_score, composition_table
from labpy.models.toy import ToyTransformerConfig, build_toy_transformer
from labpy.tasks.repeated_tokens import RepeatedSegmentTask, sample
from labpy.train import step_generator


def test_earlier_matches_by_hand():
    tokens = torch.tensor([[5, 1, 5, 2, 5, 1]])
    # targets 1..5; current tokens 5, 1, 5, 2, 5 occurred before them 0, 0, 1, 0, 2 times
    assert ada.earlier_matches(tokens).tolist() == [[0, 0, 1, 0, 2]]


def test_region_masks_split_the_repeat_by_ambiguity():
    batch = sample(RepeatedSegmentTask(vocab=8, seq_len=32, min_segment=4, max_segment=12), 16, step_generator(0, 0))
    masks = ada.region_masks(batch)
    _, repeat = batch.target_masks()
    unamb, amb = masks["repeat, unambiguous"], masks["repeat, ambiguous"]
    assert not (unamb & amb).any() and torch.equal(unamb | amb, repeat)   # every repeat token was seen at least once
    assert amb.any() and unamb.any()


def test_a_last_layer_head_has_no_downstream_so_its_total_effect_is_its_direct_one():
    model = build_toy_transformer(ToyTransformerConfig(n_layers=2, d_vocab=12, n_ctx=24), seed=0).eval()
    batch = sample(RepeatedSegmentTask(vocab=12, seq_len=24, min_segment=4, max_segment=10), 8, step_generator(1, 0))
    effects = ada.head_effects(model, batch.tokens, ada.region_masks(batch))
    last, first = effects[effects.layer == 1], effects[effects.layer == 0]
    assert torch.allclose(torch.tensor(last.total.to_numpy()), torch.tensor(last.direct.to_numpy()), atol=1e-5)
    assert (first.total - first.direct).abs().max() > 1e-4              # earlier heads also act through layer 1


def test_heads_writes_sum_to_the_attention_output():
    model = build_toy_transformer(ToyTransformerConfig(n_layers=1, d_vocab=12, n_ctx=16), seed=0).eval()
    tokens = torch.randint(0, 12, (2, 16), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    z = cache["blocks.0.attn.hook_z"]                                     # (B, T, H, d_head)
    writes = sum(ada.head_contribution(model, z, 0, h) for h in range(model.cfg.n_heads))
    assert torch.allclose(writes + model.b_O[0], cache["blocks.0.hook_attn_out"], atol=1e-5)


def test_composition_scores_by_hand():
    assert composition_score(torch.eye(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)) == pytest.approx(0.5)
    model = build_toy_transformer(ToyTransformerConfig(n_layers=3), seed=0)
    table = composition_table(model)
    assert len(table) == 3 * (3 * 16)                                      # modes × (3 layer pairs × 4 × 4 heads)
    assert table.score.between(0, 1).all()


def test_dropout_masks_repeat_for_the_same_step_and_keep_the_mean():
    model = build_toy_transformer(ToyTransformerConfig(n_layers=1), seed=0)
    x = torch.ones(200, 100)
    draw = lambda: depth.dropout_hooks(model, 0.1, step_generator(7, 3))[0][1](x)
    a, b = draw(), draw()
    assert torch.equal(a, b) and abs((a == 0).float().mean().item() - 0.1) < 0.01 and abs(a.mean().item() - 1) < 0.02


def test_a_bad_dropout_is_one_clear_line():
    with pytest.raises(ConfigError, match=r"DepthConfig\.dropout = 1\.5 is out of range"):
        depth.DepthConfig(dropout=1.5)


def test_composition_against_initial_pairs_each_score_with_the_initial_models():
    from labpy.interp.composition import composition_against_initial

    config = ToyTransformerConfig(n_layers=2, d_vocab=12, n_ctx=24)
    trained, initial = build_toy_transformer(config, seed=0), build_toy_transformer(config, seed=1)
    table = composition_against_initial(trained, initial)
    assert table.score.tolist() == composition_table(trained).score.tolist()
    assert table.initial.tolist() == composition_table(initial).score.tolist()
    assert (table.over_initial == table.score / table.initial).all()
    assert (composition_against_initial(trained, trained).over_initial == 1.0).all()


def _hand_batch():
    """One sequence: prefix 7 3, then the segment 3 1 3 2 (L = 4) twice. Positions: 0:7 1:3 2:3 3:1 4:3 5:2
    6:3 7:1 8:3 9:2."""
    from labpy.tasks.repeated_tokens import RepeatedBatch

    return RepeatedBatch(torch.tensor([[7, 3, 3, 1, 3, 2, 3, 1, 3, 2]]), torch.tensor([2]), torch.tensor([4]))


def test_occurrence_candidates_by_hand():
    batch = _hand_batch()
    masks = ada.region_masks(batch)
    # repeat targets at positions 7, 8, 9 (queries 6, 7, 8); query 6 (token 3) and 8 (token 3) are ambiguous
    assert masks["repeat, ambiguous"].nonzero()[:, 1].tolist() == [6, 8]
    b, t, candidates, right = ada.occurrence_candidates(batch, masks["repeat, ambiguous"])
    assert t.tolist() == [6, 8]
    # keys right after a 3 seen before the query: after 1, 2, 4 for query 6; after 1, 2, 4, 6 for query 8
    assert candidates[0].nonzero().flatten().tolist() == [2, 3, 5]
    assert candidates[1].nonzero().flatten().tolist() == [2, 3, 5, 7]
    assert right.tolist() == [3, 5]                       # t - L + 1: after the first copy's 3 at 2 and at 4
    with pytest.raises(ValueError, match="repeat targets"):
        ada.occurrence_candidates(batch, masks["first copy"])


def test_occurrence_shares_by_hand(monkeypatch):
    batch = _hand_batch()
    pattern = torch.zeros(1, 1, 2, 10, 10)               # (n_layers, B, H, T, T)
    pattern[0, 0, 0, 6, [2, 3, 5]] = torch.tensor([0.2, 0.6, 0.2])       # head 0: 0.6 of 1.0 on the right key 3
    pattern[0, 0, 0, 8, [5, 7, 0]] = torch.tensor([0.3, 0.1, 0.6])       # 0.3 of 0.4 on candidates on key 5
    pattern[0, 0, 1, 6, 0] = pattern[0, 0, 1, 8, 0] = 1.0                # head 1 never looks at a candidate
    monkeypatch.setattr(ambiguity, "attention_patterns", lambda model, tokens: pattern)
    table = ada.occurrence_shares(None, batch, ada.region_masks(batch)["repeat, ambiguous"]).set_index("label")
    assert table.loc["L0H0", "on candidates"] == pytest.approx((1.0 + 0.4) / 2)
    assert table.loc["L0H0", "right share"] == pytest.approx((0.6 + 0.75) / 2)
    assert table.loc["L0H0", "chance"] == pytest.approx((1 / 3 + 1 / 4) / 2) and table.loc["L0H0", "targets"] == 2
    assert table.loc["L0H0", "uniform"] == pytest.approx((3 / 7 + 4 / 9) / 2)   # candidates over keys 0..t
    assert table.loc["L0H1", "on candidates"] == 0.0
    assert table.loc["L0H0", "peak"] == pytest.approx((0.6 + 0.6) / 2) and table.loc["L0H1", "peak"] == 1.0
    # head 0's largest weights: key 3 for query 6 (3 back, right + 0), key 0 for query 8 (8 back, right - 5);
    # torch's median of two values is the lower one
    assert (table.loc["L0H0", "peak back"], table.loc["L0H0", "peak past right"]) == (3.0, -5.0)
