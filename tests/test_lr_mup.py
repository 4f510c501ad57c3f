"""μP: per-parameter rates in the training loop (checked by hand on Adam's first step), the μP lab LM (the standard
model at the base width; at twice the width its hidden weights, attention scale and logits rescaled by hand-computed
factors), the lr_mup configs, bad input named, and a smoke run's tables."""

import dataclasses
import math

import pytest
import torch

from labpy.errors import ConfigError
from labpy.experiments.lr_mup import BASE_WIDTH, MUP_WIDTHS, MupConfig, mup_config
from labpy.experiments.lr_sweep import SweepConfig
from labpy.experiments.lr_width import WIDTH_LRS, width_config
from labpy.experiments.registry import get_experiment
from labpy.models.mup import HIDDEN_WEIGHTS, apply_mup, mup_lr_scales
from labpy.train import TrainSpec, lr_scale_groups, train


def _two_layers():
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("inner", torch.nn.Linear(4, 4))
    model.add_module("outer", torch.nn.Linear(4, 1))
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    return model, (lambda step: x), (lambda m, batch: m(batch).pow(2).mean())


def test_adams_first_step_moves_each_weight_by_its_own_rate():
    """Adam's first update is lr · g / (|g| + eps) ≈ ±lr per entry, so with a scale of 1/4 on `inner.weight` its
    entries move by lr/4 and every other parameter's by lr (no decay, no clip, constant rate)."""
    model, batch_fn, loss_fn = _two_layers()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = TrainSpec(steps=1, lr=1e-2, grad_clip=None, lr_scales=((r"^inner\.weight$", 0.25),))
    train(model, batch_fn, loss_fn, spec, device="cpu")
    moved = {k: (model.state_dict()[k] - before[k]).abs() for k in before}
    assert moved["inner.weight"] == pytest.approx(torch.full((4, 4), 2.5e-3), rel=1e-4)
    for name in ("inner.bias", "outer.weight", "outer.bias"):
        assert moved[name] == pytest.approx(torch.full_like(moved[name], 1e-2), rel=1e-4)


def test_the_first_matching_pattern_sets_the_scale_and_groups_follow_it():
    model, _, _ = _two_layers()
    named = list(model.named_parameters())
    groups = lr_scale_groups(named, ((r"weight", 0.5), (r"^inner", 3.0)))
    by_scale = {g["lr_scale"]: [n for n, p in named if any(p is q for q in g["params"])] for g in groups}
    assert by_scale == {0.5: ["inner.weight", "outer.weight"], 3.0: ["inner.bias"], 1.0: ["outer.bias"]}


def test_a_pattern_matching_nothing_is_named():
    model, batch_fn, loss_fn = _two_layers()
    spec = TrainSpec(steps=1, lr=1e-2, lr_scales=((r"q_proj", 0.5),))
    with pytest.raises(ValueError, match=r"lr_scales pattern 'q_proj' matches no trained parameter \(e.g. 'inner"):
        train(model, batch_fn, loss_fn, spec, device="cpu")


@pytest.mark.parametrize("scales, message", [
    (((r"w", 0.0),), r"lr_scales = .* holds multiplier 0.0 for 'w'; each must be a finite number > 0"),
    (((r"w", math.inf),), r"holds multiplier inf for 'w'"),
    (((r"(", 1.0),), r"holds '\(', not a regular expression"),
])
def test_bad_lr_scales_are_named(scales, message):
    with pytest.raises(ConfigError, match=message):
        TrainSpec(steps=1, lr=1e-2, lr_scales=scales)


def test_resume_with_scaled_rates_is_bit_identical(tmp_path):
    spec = TrainSpec(steps=20, lr=1e-2, resume_every=10, eval_every=10, lr_scales=((r"^outer", 0.1),))
    model, batch_fn, loss_fn = _two_layers()
    train(model, batch_fn, loss_fn, spec, device="cpu")
    expected = model.state_dict()

    model, batch_fn, loss_fn = _two_layers()

    def dying(step):
        if step == 14:
            raise KeyboardInterrupt
        return batch_fn(step)

    with pytest.raises(KeyboardInterrupt):
        train(model, dying, loss_fn, spec, work_dir=tmp_path, device="cpu")
    model, batch_fn, loss_fn = _two_layers()
    train(model, batch_fn, loss_fn, spec, work_dir=tmp_path, device="cpu")
    assert all(torch.equal(expected[k], model.state_dict()[k]) for k in expected)


def test_at_the_base_width_mup_is_the_standard_model():
    mup, standard = mup_config(BASE_WIDTH, 1e-2), width_config(BASE_WIDTH, 1e-2)
    a, b = mup.build_model(0), standard.build_model(0)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    ids = torch.randint(0, mup.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
    assert mup.train_spec(0) == standard.train_spec(0)


def test_at_twice_the_width_each_change_matches_its_hand_computed_factor():
    """m = 2: hidden weights × 1/√2 (same draws), embedding and norms unchanged, attention scale √16/32 = 1/8 (not
    1/√32), logits = final hidden state · embeddingᵀ / 2, hidden rates × 1/2."""
    config = mup_config(2 * BASE_WIDTH, 1e-2)
    mup, standard = config.build_model(0), width_config(2 * BASE_WIDTH, 1e-2).build_model(0)
    for (name, p), q in zip(mup.named_parameters(), standard.parameters()):
        factor = 1 / math.sqrt(2) if name.endswith(("proj.weight",)) else 1.0
        assert torch.allclose(p, q * factor, rtol=0, atol=1e-7), name
    assert all(layer.self_attn.scaling == pytest.approx(1 / 8) for layer in mup.model.layers)
    ids = torch.randint(0, config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(4))
    out = mup(input_ids=ids, output_hidden_states=True)
    by_hand = out.hidden_states[-1] @ mup.model.embed_tokens.weight.T / 2
    assert torch.allclose(out.logits, by_hand, atol=1e-6)
    assert config.train_spec(0).lr_scales == ((HIDDEN_WEIGHTS, 0.5),)
    assert mup_lr_scales(32, 64) == ((HIDDEN_WEIGHTS, 2.0),)


def test_the_attention_scale_is_the_one_the_model_uses():
    """A near-zero scale makes every head attend uniformly: the logits must change, or the attribute is dead."""
    model = mup_config(2 * BASE_WIDTH, 1e-2).build_model(0)
    ids = torch.randint(0, 1024, (1, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for p in model.parameters():      # larger queries and keys, so the scale matters well above rounding
            p.mul_(10)
        scaled = model(input_ids=ids).logits
        for layer in model.model.layers:
            layer.self_attn.scaling = 1e-9
        uniform = model(input_ids=ids).logits
    assert (scaled - uniform).abs().max() > 1e-3


def test_cpu_configs_change_only_width_rate_and_parametrisation():
    configs = get_experiment("lr_mup").configs("cpu")
    assert {(c.hidden_size, c.lr) for c in configs.values()} == {(w, lr) for w in MUP_WIDTHS for lr in WIDTH_LRS}
    for config in configs.values():
        assert isinstance(config, MupConfig) and config.base_width == BASE_WIDTH
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(SweepConfig)}
        assert SweepConfig(**fields) == width_config(config.hidden_size, config.lr)


@pytest.mark.parametrize("changes, message", [
    ({"base_width": 30}, r"MupConfig.base_width = 30 is out of range; it must be a positive multiple of n_heads = 4"),
    ({"base_width": 0}, r"base_width = 0 is out of range"),
])
def test_bad_base_width_is_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        MupConfig(**changes)


def test_smoke_run_fills_the_tables(tmp_store):
    from labpy import results

    runs = results("lr_mup", "smoke")
    assert {e.config.hidden_size for e in runs.entries.values()} == {8, 32}
    for entry in runs.entries.values():
        seeds = entry.table("seeds")
        assert list(seeds.seed) == list(entry.config.seeds) and seeds.final_val_loss.notna().all()
