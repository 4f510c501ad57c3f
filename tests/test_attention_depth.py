"""attention_depth: ambiguity of a one-token match, direct against total effects, dropout through hooks."""

from __future__ import annotations

import pytest
import torch

from labpy.errors import ConfigError
from labpy.experiments import attention_depth as depth
from labpy.experiments import attention_depth_analysis as ada
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
