"""lr_embedding_split: the hidden matrices' rate is the stated fraction of the embedding's (checked on Adam's first
step, whose size is the rate), a scale of 1 is the plain sweep, bad scales are named, and a smoke run's tables fill."""

import dataclasses

import pytest
import torch

from labpy.errors import ConfigError
from labpy.experiments.lr_embedding_split import SPLIT_LRS, SPLIT_SCALES, SplitRateConfig, split_config
from labpy.experiments.lr_sweep import SMOKE
from labpy.experiments.lr_width import width_config
from labpy.experiments.registry import get_experiment
from labpy.models.lab_lm import lm_loss
from labpy.train import train

SMALL = {k: v for k, v in SMOKE.items() if k not in ("hidden_size", "intermediate_size")}


def first_step_moves(config) -> dict[str, float]:
    """Median |change| of every parameter's moved entries after one Adam step of `config`'s model on a fixed batch (no
    warm-up, decay or clip): Adam's first step moves each entry with a gradient by its own rate, so this reads each
    parameter's rate (an untied embedding moves only the rows of the batch's tokens)."""
    model = config.build_model(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = torch.randint(0, config.vocab_size, (4, config.seq_len + 1), generator=torch.Generator().manual_seed(2))
    spec = config.train_spec(0, steps=1, warmup_steps=0, weight_decay=0.0, grad_clip=None)
    train(model, lambda step: batch, lm_loss, spec, device="cpu")
    moved = {n: (p.detach() - before[n]).abs() for n, p in model.named_parameters()}
    return {n: change[change > 0].median().item() for n, change in moved.items()}


def test_adams_first_step_is_the_embedding_rate_and_a_quarter_of_it_in_the_hidden_matrices():
    moved = first_step_moves(split_config(16, 1e-2, 0.25, **SMALL))
    assert moved["model.layers.0.mlp.up_proj.weight"] == pytest.approx(2.5e-3, rel=1e-3)
    assert moved["model.layers.0.self_attn.q_proj.weight"] == pytest.approx(2.5e-3, rel=1e-3)
    assert moved["model.embed_tokens.weight"] == pytest.approx(1e-2, rel=1e-3)
    assert moved["model.layers.0.self_attn.q_proj.bias"] == pytest.approx(1e-2, rel=1e-3)


def test_a_scale_of_one_is_the_plain_sweep():
    assert split_config(64, 5e-3, 1.0).train_spec(0) == width_config(64, 5e-3).train_spec(0)


def test_bad_scale_is_named():
    with pytest.raises(ConfigError, match=r"SplitRateConfig.hidden_lr_scale = 0.0 is out of range"):
        SplitRateConfig(hidden_lr_scale=0.0)


def test_cpu_configs():
    configs = get_experiment("lr_embedding_split").configs("cpu")
    expected = {(w, s, lr) for w, scales in SPLIT_SCALES.items() for s in scales for lr in SPLIT_LRS[w]}
    assert {(c.hidden_size, c.hidden_lr_scale, c.lr) for c in configs.values()} == expected
    assert all(c.intermediate_size == 3 * c.hidden_size and c.seeds == (0, 1, 2) for c in configs.values())


def test_limits_configs_extend_the_grid_and_lengthen_only_the_quarter():
    from labpy.experiments.lr_split_limits import LONG_LRS, WIDER_GRID

    configs = get_experiment("lr_split_limits").configs("cpu")
    short = {(c.hidden_lr_scale, c.lr) for c in configs.values() if c.steps == 200}
    assert short == {(s, lr) for s, lrs in WIDER_GRID.items() for lr in lrs}
    long = [c for c in configs.values() if c.steps == 800]
    assert {(c.hidden_lr_scale, c.lr) for c in long} == {(0.25, lr) for lr in LONG_LRS}
    assert all(c.hidden_size == 64 and c.warmup_steps == 20 and c.seeds == (0, 1, 2) for c in configs.values())
    stored = {(c.hidden_lr_scale, c.lr) for c in get_experiment("lr_embedding_split").configs("cpu").values()
              if c.hidden_size == 64}
    assert not short & stored                                  # nothing already in the store is run again


def test_attention_and_mlp_take_their_own_shares_on_adams_first_step():
    from labpy.experiments.lr_split_parts import PartSplitConfig

    moved = first_step_moves(PartSplitConfig(lr=1e-2, hidden_size=16, intermediate_size=48, hidden_lr_scale=0.125,
                                             attention_lr_scale=0.25, **SMALL))
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert moved[f"model.layers.0.self_attn.{name}.weight"] == pytest.approx(2.5e-3, rel=1e-3), name
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert moved[f"model.layers.0.mlp.{name}.weight"] == pytest.approx(1.25e-3, rel=1e-3), name
    assert moved["model.embed_tokens.weight"] == pytest.approx(1e-2, rel=1e-3)
    assert PartSplitConfig(hidden_lr_scale=0.5).train_spec(0) == split_config(64, 1e-3, 0.5).train_spec(0)
    with pytest.raises(ConfigError, match=r"attention_lr_scale = -1.0 is out of range"):
        PartSplitConfig(attention_lr_scale=-1.0)


def test_queries_and_keys_take_their_own_share_on_adams_first_step():
    from labpy.experiments.lr_split_qk import QKSplitConfig

    moved = first_step_moves(QKSplitConfig(lr=1e-2, hidden_size=16, intermediate_size=48, hidden_lr_scale=0.125,
                                           attention_lr_scale=0.25, qk_lr_scale=0.5, **SMALL))
    expected = {"self_attn.q_proj": 5e-3, "self_attn.k_proj": 5e-3, "self_attn.v_proj": 2.5e-3,
                "self_attn.o_proj": 2.5e-3, "mlp.up_proj": 1.25e-3, "mlp.down_proj": 1.25e-3}
    for name, rate in expected.items():
        assert moved[f"model.layers.0.{name}.weight"] == pytest.approx(rate, rel=1e-3), name
    assert moved["model.embed_tokens.weight"] == pytest.approx(1e-2, rel=1e-3)
    with pytest.raises(ConfigError, match=r"qk_lr_scale = 0.0 is out of range"):
        QKSplitConfig(qk_lr_scale=0.0)


def test_width_grid_gives_the_hidden_matrices_their_absolute_rates():
    from labpy.experiments.lr_split_width import EMBEDDING_LRS, HIDDEN_LRS, WIDTH_GRID

    configs = get_experiment("lr_split_width").scales["cpu"]
    assert len(configs) == len(WIDTH_GRID) * len(EMBEDDING_LRS) * len(HIDDEN_LRS) == 30
    grid = {(c.hidden_size, c.lr, round(c.lr * c.hidden_lr_scale, 12)) for c in configs.values()}
    assert grid == {(w, lr, h) for w in WIDTH_GRID for lr in EMBEDDING_LRS for h in HIDDEN_LRS}
    assert all(c.intermediate_size == 3 * c.hidden_size for c in configs.values())
    moved = first_step_moves(SplitRateConfig(lr=2e-1, hidden_size=16, intermediate_size=48,
                                             hidden_lr_scale=HIDDEN_LRS[0] / 2e-1, **SMALL))
    assert moved["model.layers.0.mlp.up_proj.weight"] == pytest.approx(HIDDEN_LRS[0], rel=1e-3)
    assert moved["model.embed_tokens.weight"] == pytest.approx(2e-1, rel=1e-3)


def test_values_take_their_own_share_and_the_readout_unties():
    from labpy.experiments.lr_split_vo import ValueSplitConfig

    moved = first_step_moves(ValueSplitConfig(lr=1e-2, hidden_size=16, intermediate_size=48, hidden_lr_scale=0.125,
                                              attention_lr_scale=0.25, qk_lr_scale=0.5, v_lr_scale=0.0625,
                                              tie_readout=False, **SMALL))
    expected = {"self_attn.q_proj": 5e-3, "self_attn.v_proj": 6.25e-4, "self_attn.o_proj": 2.5e-3,
                "mlp.gate_proj": 1.25e-3}
    for name, rate in expected.items():
        assert moved[f"model.layers.0.{name}.weight"] == pytest.approx(rate, rel=1e-3), name
    assert moved["lm_head.weight"] == pytest.approx(1e-2, rel=1e-3)     # its own matrix, at the peak rate
    untied, tied = (ValueSplitConfig(hidden_size=16, intermediate_size=48, tie_readout=t, **SMALL).build_model(0)
                    for t in (False, True))
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == 16 * SMALL[
        "vocab_size"]
    with pytest.raises(ConfigError, match=r"v_lr_scale = -0.5 is out of range"):
        ValueSplitConfig(v_lr_scale=-0.5)


def test_the_untied_readout_takes_its_own_share():
    from labpy.experiments.lr_untied import UntiedConfig

    moved = first_step_moves(UntiedConfig(lr=1e-2, hidden_size=16, intermediate_size=48, hidden_lr_scale=0.25,
                                          readout_lr_scale=0.125, **SMALL))
    assert moved["lm_head.weight"] == pytest.approx(1.25e-3, rel=1e-3)
    assert moved["model.embed_tokens.weight"] == pytest.approx(1e-2, rel=1e-3)
    assert moved["model.layers.0.mlp.down_proj.weight"] == pytest.approx(2.5e-3, rel=1e-3)
    with pytest.raises(ConfigError, match=r"readout_lr_scale = 0.5 needs tie_readout = False"):
        UntiedConfig(readout_lr_scale=0.5, tie_readout=True)


def test_untied_width_grid_mirrors_the_tied_one():
    from labpy.experiments.lr_split_width import HIDDEN_LRS, WIDTH_GRID

    tied = get_experiment("lr_split_width").scales["cpu"]
    untied = get_experiment("lr_untied_width").scales["cpu"]
    pairs = {(c.hidden_size, round(c.lr * c.hidden_lr_scale, 12)) for c in untied.values() if c.steps == 200}
    assert pairs == {(w, h) for w in WIDTH_GRID for h in HIDDEN_LRS}
    for name, c in untied.items():                            # each 200-step run is a tied run, untied
        if c.steps == 200:
            twin = tied[name.replace("_untied", "")]
            assert not c.tie_readout and twin.train_spec(0) == c.train_spec(0)
            assert c.hf_config().tie_word_embeddings is False and twin.hf_config().tie_word_embeddings is True
    long = {c.tie_readout: c for c in untied.values() if c.steps == 800}
    assert set(long) == {True, False} and all(c.lr == 5e-2 and c.hidden_lr_scale == 0.125 for c in long.values())



def test_the_peak_rate_parts_leave_the_peak_one_at_a_time():
    from labpy.experiments.lr_split_cliff import CLIFF_HIDDEN_LR, PeakPartsConfig

    moved = first_step_moves(PeakPartsConfig(lr=2e-1, hidden_size=16, intermediate_size=48,
                                             hidden_lr_scale=CLIFF_HIDDEN_LR / 2e-1, embedding_lr_scale=0.5,
                                             norm_lr_scale=0.25, bias_lr_scale=0.125, **SMALL))
    assert moved["model.embed_tokens.weight"] == pytest.approx(1e-1, rel=1e-3)
    for name in ("model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
                 "model.norm.weight"):
        assert moved[name] == pytest.approx(5e-2, rel=1e-3), name
    # a value bias, not a key bias: a key bias shifts all of a query's scores alike, so its gradient is about zero
    assert moved["model.layers.0.self_attn.v_proj.bias"] == pytest.approx(2.5e-2, rel=1e-3)
    assert moved["model.layers.0.mlp.down_proj.weight"] == pytest.approx(CLIFF_HIDDEN_LR, rel=1e-3)
    cpu = get_experiment("lr_split_cliff").scales["cpu"].values()
    assert all(c.lr * c.hidden_lr_scale == pytest.approx(CLIFF_HIDDEN_LR) for c in cpu) and len(cpu) == 6


# Each split experiment's smoke scale: the shape of its configs, and every seed's final loss filled.
SMOKE_SHAPES = {
    "lr_embedding_split": lambda configs: {c.hidden_size for c in configs} == {8, 32},
    "lr_split_limits": lambda configs: {c.steps for c in configs} == {12, 48},
    "lr_split_parts": lambda configs: len(configs) == 5,
    "lr_split_qk": lambda configs: len(configs) == 3,
    "lr_split_width": lambda configs: {c.hidden_size for c in configs} == {8, 16},
    "lr_split_vo": lambda configs: sum(not c.tie_readout for c in configs) == 2,
    "lr_untied": lambda configs: len(configs) == 8 and not any(c.tie_readout for c in configs),
    "lr_untied_width": lambda configs: {c.steps for c in configs} == {12, 48},
    "lr_split_cliff": lambda configs: len(configs) == 3,
    "lr_cliff_diagnosis": lambda configs: sum(c.tie_readout for c in configs) == 2,
    "lr_cliff_timeline": lambda configs: sorted(c.embed_scale for c in configs) == [0.25, 1, 1, 1, 4],
    "lr_embed_scale": lambda configs: len(configs) == 12 and all(c.tie_readout for c in configs),
    "lr_embed_scale_single": lambda configs: len(configs) == 12 and all(c.hidden_lr_scale == 1 for c in configs),
}


@pytest.mark.parametrize("name", SMOKE_SHAPES)
def test_smoke_run_fills_the_tables(tmp_store, name):
    from labpy import results

    runs = results(name, "smoke")
    assert SMOKE_SHAPES[name]([e.config for e in runs.entries.values()])
    for entry in runs.entries.values():
        seeds = entry.table("seeds")
        assert list(seeds.seed) == list(entry.config.seeds) and seeds.final_val_loss.notna().all()


def test_stream_scales_read_the_layers_writes_and_the_logits_spread():
    from labpy.experiments.lr_cliff_diagnosis import stream_scales

    config = split_config(16, 1e-2, 0.5, **SMALL)
    model = config.build_model(0).eval()
    windows = torch.randint(0, config.vocab_size, (3, config.seq_len + 1), generator=torch.Generator().manual_seed(1))
    for layer in model.model.layers:                        # no layer writes to the stream: o_proj and down_proj at 0
        layer.self_attn.o_proj.weight.data.zero_()
        layer.mlp.down_proj.weight.data.zero_()
    scales = {row["measure"]: row["value"] for row in stream_scales(model, windows, "zeroed")}
    with torch.no_grad():
        embedded = model.model.embed_tokens(windows[:, :-1])
        logits = model.lm_head(model.model.norm(embedded))  # the stream is the embedding alone
    assert scales["layers' writes RMS"] == 0 and scales["writes ÷ embedding"] == 0
    assert scales["embedding RMS"] == pytest.approx(float(embedded.pow(2).mean().sqrt()), rel=1e-6)
    assert scales["logit spread"] == pytest.approx(float(logits.std(-1).mean()), rel=1e-5)


def test_the_embedding_scale_multiplies_the_stream_input_and_leaves_the_tied_readout():
    from labpy.experiments.lr_cliff_timeline import EmbedScaleConfig

    windows = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(2))
    plain, scaled = (split_config(16, 1e-1, 0.25, EmbedScaleConfig, tie_readout=True, embed_scale=s, **SMALL)
                     .build_model(0).eval() for s in (1.0, 4.0))
    assert torch.equal(plain.lm_head.weight, scaled.lm_head.weight)       # same draws; the readout is the embedding
    with torch.no_grad():
        assert torch.allclose(scaled.model.embed_tokens(windows), 4 * plain.model.embed_tokens(windows))
        for model in (plain, scaled):          # no layer writes: the stream is the (scaled) embedding alone
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
        rows = plain.model.embed_tokens.weight[windows[:, :-1]]                                   # (B, T, d)
        for model, scale in ((plain, 1.0), (scaled, 4.0)):   # by hand: the unscaled matrix reads the normed stream
            by_hand = plain.lm_head(plain.model.norm(scale * rows))
            assert torch.allclose(model(input_ids=windows[:, :-1]).logits, by_hand, atol=1e-6)
    diagnosed = get_experiment("lr_cliff_diagnosis").scales["cpu"]       # the unscaled arms are its runs, measured
    timeline = get_experiment("lr_cliff_timeline").scales["cpu"]
    for name, config in diagnosed.items():
        assert dataclasses.asdict(timeline[name]) == {**dataclasses.asdict(config), "embed_scale": 1.0}
    with pytest.raises(ConfigError, match="embed_scale"):
        split_config(16, 1e-1, 0.25, EmbedScaleConfig, embed_scale=0.0, **SMALL)


def assert_same_run(config, twin) -> None:
    """`config` trains as `twin` does: every field `twin` has is equal, and so is the training spec."""
    fields = dataclasses.asdict(twin)
    assert {k: v for k, v in dataclasses.asdict(config).items() if k in fields} == fields
    assert config.train_spec(0) == twin.train_spec(0)


def test_the_unscaled_embedding_runs_are_the_width_sweeps_runs():
    sweep = {(c.hidden_size, c.lr, round(c.lr * c.hidden_lr_scale, 12)): c
             for c in get_experiment("lr_split_width").scales["cpu"].values()}
    shared = 0
    for config in get_experiment("lr_embed_scale").scales["cpu"].values():
        twin = sweep.get((config.hidden_size, config.lr, round(config.lr * config.hidden_lr_scale, 12)))
        if config.embed_scale == 1 and twin is not None:
            assert_same_run(config, twin)
            assert config.tie_readout
            shared += 1
    assert shared == 3                                   # 6.25e-3 to 2.5e-2; 5e-2 is beyond the width sweep


def test_the_unscaled_single_rate_runs_are_the_sweeps_runs():
    sweep = {c.lr: c for c in get_experiment("lr_sweep").scales["cpu"].values() if c.warmup_steps}
    unscaled = [c for c in get_experiment("lr_embed_scale_single").scales["cpu"].values() if c.embed_scale == 1]
    assert len(unscaled) == 4
    for config in unscaled:
        assert_same_run(config, sweep[config.lr])
        assert config.tie_readout
