"""induction_head_count: a head zeroed through its hook against the same head's output weights set to zero, and a
smoke run that scores every head at every checkpoint and ablates each last-layer head."""

import copy

import numpy as np
import pytest
import torch

from labpy.experiments.induction import EVAL_SEED, InductionConfig, next_token_losses
from labpy.experiments.induction_head_count import last_layer_ablations
from labpy.models.toy import build_toy_transformer
from labpy.tasks.repeated_tokens import sample
from labpy.train import step_generator


def _repeat_loss_without(model, config: InductionConfig, heads: list[int]) -> float:
    """The repeat loss with `heads` of the last layer removed by zeroing their slice of W_O (not through a hook)."""
    edited = copy.deepcopy(model)
    o = edited.blocks[config.n_layers - 1].attn.o
    with torch.no_grad():
        for h in heads:
            o.weight[:, h * config.d_head:(h + 1) * config.d_head] = 0.0
    batch = sample(config.task(), config.eval_batch, step_generator(EVAL_SEED, config.seed))
    _, repeat = batch.target_masks()
    with torch.no_grad():
        return next_token_losses(edited, batch.tokens)[repeat].mean().item()


def test_hook_ablation_matches_zeroed_output_weights():
    config = InductionConfig(n_heads=3, eval_batch=16, score_batch=8)
    model = build_toy_transformer(config.model_config(), seed=0)
    table = last_layer_ablations(model, config).set_index("zeroed")
    strongest = int(table.strongest.iloc[0].removeprefix("L1H"))
    assert list(table.index) == ["none", "L1H0", "L1H1", "L1H2", f"all but L1H{strongest}"]
    assert table.loc["none", "loss_repeat"] == pytest.approx(_repeat_loss_without(model, config, []), rel=1e-5)
    for h in range(3):
        assert table.loc[f"L1H{h}", "loss_repeat"] == pytest.approx(_repeat_loss_without(model, config, [h]), rel=1e-5)
    others = [h for h in range(3) if h != strongest]
    assert table.loc[f"all but L1H{strongest}", "loss_repeat"] == pytest.approx(
        _repeat_loss_without(model, config, others), rel=1e-5)
    assert table.loc["L1H0", "loss_repeat"] != table.loc["none", "loss_repeat"]


def test_one_head_has_no_all_but_row():
    config = InductionConfig(n_heads=1, eval_batch=8, score_batch=8)
    table = last_layer_ablations(build_toy_transformer(config.model_config(), seed=0), config)
    assert list(table.zeroed) == ["none", "L1H0"]


def test_smoke_run_scores_every_head_at_every_checkpoint(tmp_store):
    from labpy import results

    runs = results("induction_head_count", "smoke")
    for label, n_heads in (("heads-1-s0", 1), ("heads-8-s0", 8)):
        run = runs[label]
        c = run.config
        assert c.n_heads == n_heads and run.summary["n_heads"] == n_heads
        scores = run.table("scores")
        assert sorted(scores.step.unique()) == list(c.checkpoint_steps())
        assert len(scores) == len(c.checkpoint_steps()) * c.n_layers * n_heads
        assert scores[["previous_token", "induction"]].apply(lambda s: s.between(0, 1)).all().all()
        ablations = run.table("ablations").set_index("zeroed")
        # the intact model's repeat loss is the one the last eval logged (weights rounded to half precision)
        assert ablations.loc["none", "loss_repeat"] == pytest.approx(run.summary["final_loss_repeat"], abs=2e-3)
        assert not run.checkpoint_names()
    assert np.isclose(runs["heads-8-s0"].table("ablations").heads_zeroed.max(), 7)
