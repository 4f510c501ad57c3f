"""dropout_route: dropout at one place only, and a stored model trained on with dropout where its stream stopped;
dropout_switched_on: the loss of a stored model with dropout switched on, as in training."""

from __future__ import annotations

import pytest
import torch

from labpy.errors import ConfigError
from labpy.experiments import attention_depth as depth
from labpy.experiments import dropout_route as route
from labpy.experiments import dropout_switched_on as switched
from labpy.experiments.induction import fixed_eval_batch, next_token_losses
from labpy.interp.ambiguity import region_losses, region_masks
from labpy.models.toy import ToyTransformerConfig, build_toy_transformer, load_toy_transformer
from labpy.tasks.repeated_tokens import RepeatedSegmentTask, sample
from labpy.train import step_generator


def _hooked_names(sites):
    model = build_toy_transformer(ToyTransformerConfig(n_layers=2), seed=0)
    return [name for name, _ in depth.dropout_hooks(model, 0.1, step_generator(0, 0), sites)]


def test_each_place_alone_hooks_only_its_own_points():
    assert _hooked_names(("pattern",)) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    assert _hooked_names(("output",)) == ["blocks.0.hook_attn_out", "blocks.1.hook_attn_out"]
    assert sorted(_hooked_names(route.DropoutRouteConfig().sites)) == sorted(_hooked_names(("pattern",))
                                                                             + _hooked_names(("output",)))


def test_pattern_dropout_zeroes_single_probabilities_and_rescales_the_rest():
    model = build_toy_transformer(ToyTransformerConfig(n_layers=1, d_vocab=12, n_ctx=16), seed=0).eval()
    tokens = torch.randint(0, 12, (64, 16), generator=torch.Generator().manual_seed(0))
    _, clean = model.run_with_cache(tokens)
    hooks = depth.dropout_hooks(model, 0.25, step_generator(3, 0), ("pattern",))
    with model.hooks(fwd_hooks=hooks):
        _, dropped = model.run_with_cache(tokens)
    p, q = clean["blocks.0.attn.hook_pattern"], dropped["blocks.0.attn.hook_pattern"]    # (B, H, T, T)
    live = p > 0                                                                            # the causal keys
    kept = q[live] != 0
    assert abs(1 - kept.float().mean().item() - 0.25) < 0.01
    assert torch.allclose(q[live][kept], p[live][kept] / 0.75)                              # F.dropout's scaling
    assert torch.equal(dropped["blocks.0.hook_attn_out"] != 0, clean["blocks.0.hook_attn_out"] != 0)


def _toy_batch():
    task = RepeatedSegmentTask(vocab=12, seq_len=24, min_segment=4, max_segment=10)
    batch = sample(task, 16, step_generator(1, 0))
    return batch, region_masks(batch)


def test_without_dropout_the_loss_under_dropout_is_the_clean_loss():
    model = build_toy_transformer(ToyTransformerConfig(n_layers=2, d_vocab=12, n_ctx=24), seed=0).eval()
    batch, masks = _toy_batch()
    with torch.no_grad():
        clean = region_losses(next_token_losses(model, batch.tokens), masks)
    assert switched.losses_under_dropout(model, batch, masks, 0.0, ("pattern",), draws=3) == pytest.approx(clean)
    assert switched.losses_under_dropout(model, batch, masks, 0.1, (), draws=3) == pytest.approx(clean)


def test_the_loss_under_dropout_is_the_mean_over_draws_and_repeats_for_a_seed():
    model = build_toy_transformer(ToyTransformerConfig(n_layers=2, d_vocab=12, n_ctx=24), seed=0).eval()
    batch, masks = _toy_batch()
    one = switched.losses_under_dropout(model, batch, masks, 0.3, ("pattern", "output"), draws=4, seed=2)
    assert one == switched.losses_under_dropout(model, batch, masks, 0.3, ("pattern", "output"), draws=4, seed=2)
    generator = step_generator(depth.DROPOUT_SEED + 1_000 + 2, 0)                      # the same masks, by hand
    by_hand = []
    with torch.no_grad():
        for _ in range(4):
            with model.hooks(fwd_hooks=depth.dropout_hooks(model, 0.3, generator, ("pattern", "output"))):
                by_hand.append(region_losses(next_token_losses(model, batch.tokens), masks))
    assert one == pytest.approx({r: sum(d[r] for d in by_hand) / 4 for r in one})
    assert len({round(d["first copy"], 6) for d in by_hand}) == 4                         # every draw differs


@pytest.mark.parametrize("field, value, message", [
    ("dropout_at", "attention", r"DropoutRouteConfig\.dropout_at = 'attention'"),
    ("dropout", 0.0, r"DropoutRouteConfig\.dropout = 0\.0 is out of range.*must be > 0"),
    ("start_scale", "big", r"DropoutRouteConfig\.start_scale = 'big'"),
])
def test_a_bad_config_is_one_clear_line(field, value, message):
    with pytest.raises(ConfigError, match=message):
        route.DropoutRouteConfig(**{"dropout": 0.1, field: value})


def test_a_start_of_another_shape_is_refused(tmp_store):
    config = route.DropoutRouteConfig(dropout=0.1, d_model=32, start_from="three_layer-s0", start_scale="smoke",
                                      steps=20, eval_every=20, eval_batch=32, score_batch=8, checkpoint_every=20)
    with pytest.raises(ConfigError, match=r"start_from = 'three_layer-s0' names a model of another shape"):
        route.starting_point(config)


def test_smoke_runs_continue_the_stored_model_and_score_every_checkpoint(tmp_store):
    from labpy import results

    runs, start = results("dropout_route", "smoke"), results("attention_depth", "smoke")["three_layer-s0"]
    continued, fresh = runs["plain-then-dropout-s0"], runs["pattern-s0"]
    offset = start.config.steps
    assert continued.summary["start_step"] == offset and fresh.summary["start_step"] == 0
    evals = continued.table("evals")
    assert evals.step.iloc[0] == offset and evals.step.iloc[-1] == offset + continued.config.steps
    # before its first step the continued model is the stored one (kept in half precision)
    assert evals.loss_repeat.iloc[0] == pytest.approx(start.table("evals").loss_repeat.iloc[-1], abs=2e-3)
    scores = continued.table("scores")
    assert sorted(scores.step.unique()) == [offset + s for s in continued.config.checkpoint_steps()]
    assert (scores.groupby("step").size() == continued.config.n_layers * continued.config.n_heads).all()
    regions = continued.table("regions").set_index("region")
    masks = region_masks(fixed_eval_batch(continued.config))
    assert regions.targets.to_dict() == {r: int(m.sum()) for r, m in masks.items()}
    assert not continued.checkpoint_names() and not fresh.checkpoint_names()


def test_switched_on_smoke_run_stores_every_model_setting_and_region(tmp_store):
    from labpy import results

    run = results("dropout_switched_on", "smoke")["models"]
    config, depth = run.config, results("attention_depth", "smoke")
    losses = run.table("losses").set_index(["model", "dropout on", "region"]).loss.sort_index()
    assert len(losses) == len(config.models) * len(switched.SETTINGS) * 3
    entry = depth[config.models[0]]
    model = load_toy_transformer(entry.config.model_config(), entry.step_checkpoint(max(entry.checkpoint_steps())))
    batch = fixed_eval_batch(entry.config, config.batch)
    masks = region_masks(batch)
    with torch.no_grad():
        clean = region_losses(next_token_losses(model, batch.tokens), masks)       # the stored weights, by hand
    assert losses[config.models[0], "none"].to_dict() == pytest.approx(clean, abs=1e-5)
    both = switched.losses_under_dropout(model, batch, masks, config.dropout, switched.SETTINGS["both"], config.draws)
    assert losses[config.models[0], "both"].to_dict() == pytest.approx(both, abs=1e-5)
    assert (losses.xs("both", level="dropout on") != losses.xs("none", level="dropout on")).all()


def test_a_layer_config_drops_only_its_layers_outputs():
    from labpy.experiments.dropout_layers import DropoutLayersConfig

    model = build_toy_transformer(ToyTransformerConfig(n_layers=3), seed=0)
    names = lambda config: [name for name, _ in config.dropout_hooks(model, step_generator(0, 0))]
    assert names(DropoutLayersConfig()) == ["blocks.0.hook_attn_out"]
    assert names(DropoutLayersConfig(dropout_layers=(1, 2))) == ["blocks.1.hook_attn_out", "blocks.2.hook_attn_out"]
    assert names(route.DropoutRouteConfig(dropout_at="output")) == [f"blocks.{i}.hook_attn_out" for i in range(3)]


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_a_layer_config_at_a_higher_rate_drops_that_share_and_adds_noise_of_variance_p_over_1_minus_p(p):
    """The dose runs' premise: dropout of p on a unit of value 1 keeps it with probability 1 - p at 1/(1 - p), so
    its mean stays 1 and its variance is p/(1 - p) (0.11 at 0.1, 0.43 at 0.3)."""
    from labpy.experiments.dropout_layers import DropoutLayersConfig

    model = build_toy_transformer(ToyTransformerConfig(n_layers=3), seed=0)
    (name, drop), = DropoutLayersConfig(dropout_layers=(1,), dropout=p).dropout_hooks(model, step_generator(0, 0))
    out = drop(torch.ones(64, 64, 64))
    assert name == "blocks.1.hook_attn_out"
    assert (out == 0).float().mean().item() == pytest.approx(p, abs=0.005)
    assert out.unique().tolist() == pytest.approx([0.0, 1 / (1 - p)])
    assert out.mean().item() == pytest.approx(1, abs=0.01)
    assert out.var().item() == pytest.approx(p / (1 - p), rel=0.03)


@pytest.mark.parametrize("layers", [(), (3,), (0, 0), (-1,)])
def test_bad_dropout_layers_are_one_clear_line(layers):
    from labpy.experiments.dropout_layers import DropoutLayersConfig

    with pytest.raises(ConfigError, match=r"DropoutLayersConfig\.dropout_layers = .* must name distinct layers from 0 "
                                          r"to 2"):
        DropoutLayersConfig(dropout_layers=layers)


def test_layer_smoke_runs_store_curves_scores_and_regions(tmp_store):
    from labpy import results

    runs = results("dropout_layers", "smoke")
    for entry in runs.entries.values():
        assert entry.summary["start_step"] == 0
        assert sorted(entry.table("scores").step.unique()) == list(entry.config.checkpoint_steps())
        assert set(entry.table("regions").region) == {"first copy", "repeat, unambiguous", "repeat, ambiguous"}
    first, other = (runs[label].table("steps").loss.iloc[0] for label in ("output-layer0-s0", "output-layers12-s0"))
    assert first != other              # the same data and initialisation: only where dropout acts differs
    steps = {label: entry.table("steps").loss for label, entry in runs.entries.items()}
    assert steps["output-layer1-p02-s0"].iloc[0] != steps["output-layer1-s0"].iloc[0]    # only the rate differs
    assert runs["output-layers12-s1"].config.seed == 1
    assert steps["output-layers12-s1"].iloc[0] != steps["output-layers12-s0"].iloc[0]
