"""Wind-tunnel models, metrics and geometry: each checked against a hand computation or an independent route."""

import math

import pytest
import torch

from labpy.experiments import wind_tunnels as wt
from labpy.interp import bayes_geometry as geo
from labpy.models.context_mlp import ContextMLP, ContextMLPConfig, matched_config, padded_prefixes
from labpy.tasks import bijection
from labpy.train import step_generator


def test_mlp_parameter_formula_is_the_real_count():
    config = ContextMLPConfig(n_tokens=10, context=17, n_out=10, d_embed=14, width=50, depth=3)
    assert config.n_params() == sum(p.numel() for p in ContextMLP(config).parameters())


@pytest.mark.parametrize("task", ["bijection", "hmm"])
def test_cpu_mlp_matches_the_transformer_within_one_percent(task):
    config = wt.WindTunnelConfig(task=task)
    transformer = sum(p.numel() for p in wt.build_model(config).parameters())
    mlp = sum(p.numel() for p in wt.build_model(wt.WindTunnelConfig(task=task, model="mlp")).parameters())
    assert abs(mlp - transformer) / transformer <= 0.01


def test_matched_config_names_an_impossible_target():
    with pytest.raises(ValueError, match="within 1% of 50 parameters"):
        matched_config(50, n_tokens=10, context=17, n_out=10)


def test_padded_prefixes_show_exactly_the_causal_prefix():
    tokens = torch.tensor([[3, 1, 4, 1, 5]])
    rows = padded_prefixes(tokens, torch.tensor([0, 2, 4]), context=5, pad_id=9)
    assert rows.tolist() == [[[3, 9, 9, 9, 9], [3, 1, 4, 9, 9], [3, 1, 4, 1, 5]]]


@pytest.mark.parametrize("model", ["transformer", "mlp"])
def test_predictions_never_see_the_future(model):
    config = wt.WindTunnelConfig(vocab=6, n_layers=1, d_model=16, n_heads=2, d_mlp=32, mlp_depth=1, model=model)
    net = wt.build_model(config).eval()
    batch = wt.make_batch(config, 4, step_generator(0, 0))
    before = wt.predict_logits(net, batch)
    changed = batch.tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % config.vocab    # tokens after prediction 3 (position 4)
    after = wt.predict_logits(net, wt.TunnelBatch(changed, batch.positions, batch.posterior, batch.labels))
    assert torch.allclose(before[:, :3], after[:, :3], atol=1e-6)     # predictions at positions 0, 2, 4
    assert not torch.allclose(before[:, 3:], after[:, 3:])


class _Oracle(torch.nn.Module):
    """Outputs the exact posterior (or uniform): the metrics' reference points."""

    def __init__(self, posterior: torch.Tensor | None, n_out: int):
        super().__init__()
        self.posterior, self.n_out = posterior, n_out

    def forward(self, tokens):
        B, T = tokens.shape
        logits = torch.zeros(B, T, self.n_out)
        if self.posterior is not None:
            logits[:, 0:2 * self.posterior.shape[1]:2] = self.posterior.clamp(min=1e-30).log()
        return logits


def test_metrics_are_zero_for_the_posterior_and_the_uniform_gap_by_hand():
    config = wt.WindTunnelConfig(vocab=10)
    batch = wt.make_batch(config, 200, step_generator(0, 1))
    exact = wt.position_errors(_Oracle(batch.posterior, 10), batch)
    assert exact.entropy_error.max() < 1e-5 and exact.kl.max() < 1e-5
    uniform = wt.position_errors(_Oracle(None, 10), batch)
    by_hand = [math.log2(10) - math.log2(10 - t + 1) for t in range(1, 10)]   # log2 V − log2(V − t + 1)
    assert uniform.entropy_error.tolist() == pytest.approx(by_hand, abs=1e-5)
    assert uniform.kl.tolist() == pytest.approx(by_hand, abs=1e-5)          # uniform q: KL = log2 V − H(p)


def test_hmm_batch_targets_are_the_forward_posterior_at_observation_tokens():
    config = wt.WindTunnelConfig(task="hmm", hmm_length=6)
    batch = wt.make_batch(config, 3, step_generator(2, 0))
    assert batch.tokens.shape == (3, 50 + 6) and batch.positions.tolist() == list(range(50, 56))
    assert torch.allclose(batch.posterior.sum(-1), torch.ones(3, 6))
    assert (batch.tokens[:, batch.positions] > config.hmm_grid).all()      # observation ids follow the grid


def test_key_orthogonality_zero_for_orthogonal_keys_and_random_baseline_by_formula():
    d, V = 8, 4
    state = {"embed.weight": torch.eye(d)[:V], "blocks.0.ln1.weight": torch.ones(d),
             "blocks.0.attn.k.weight": torch.eye(d)}
    table = geo.key_orthogonality(state, n_heads=1, token_ids=range(V))
    assert table.mean_abs_cos.iloc[0] == pytest.approx(0.0, abs=1e-12)
    state["embed.weight"] = torch.ones(V, d)                                  # identical keys: cosine 1
    assert geo.key_orthogonality(state, 1, range(V)).mean_abs_cos.iloc[0] == pytest.approx(1.0)
    assert geo.random_key_baseline(10, 256) == pytest.approx(math.sqrt(2 / (math.pi * 256)), rel=0.03)


def test_js_and_cka_reference_points():
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert geo.js_divergence_bits(p, p).item() == pytest.approx(0.0, abs=1e-12)
    assert geo.js_divergence_bits(p, p.flip(-1)).item() == pytest.approx(1.0)
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1)))
    assert geo.linear_cka(x, 3 * x @ rotation) == pytest.approx(1.0)
    assert geo.linear_cka(x, torch.randn(200, 6, generator=torch.Generator().manual_seed(2))) < 0.2


def test_elimination_attention_is_exact_for_uniform_attention_on_revealed_values():
    n_pairs, T = 5, 10
    patterns = torch.zeros(1, 2, 1, T, T)
    for t in range(2, n_pairs + 1):
        q = 2 * (t - 1)
        patterns[0, :, 0, q, 1:q:2] = 1.0 / (t - 1)
    table = geo.elimination_attention(patterns, n_pairs)
    assert table.mass_on_values.iloc[0] == pytest.approx(1.0)
    assert table.kl_to_uniform_revealed.iloc[0] == pytest.approx(0.0, abs=1e-9)


def test_value_manifold_finds_a_one_dimensional_entropy_coordinate():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(400, generator=g, dtype=torch.float64) * 3
    direction = torch.nn.functional.normalize(torch.randn(16, generator=g, dtype=torch.float64), dim=0)
    reps = h[:, None] * direction + 0.01 * torch.randn(400, 16, generator=g, dtype=torch.float64)
    out = geo.value_manifold(reps, h, groups=torch.arange(400) % 4)
    assert out["pc1_ratio"] > 0.99 and out["pc1_pearson"] > 0.99 and out["probe_r2"] > 0.99
    assert out["pc1_pearson_within"] > 0.99


@pytest.fixture(scope="module")
def tiny_transformer():
    config = wt.WindTunnelConfig(vocab=6, n_layers=2, d_model=16, n_heads=2, d_mlp=32)
    return config, wt.build_model(config).eval()


def test_bypassing_a_block_equals_zeroing_its_writes(tiny_transformer):
    config, model = tiny_transformer
    tokens = wt.make_batch(config, 3, step_generator(0, 2)).tokens
    hooked = geo.logits_with_hooks(model, tokens, geo.ablation_hooks(layer=1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in ("attn.o.weight", "attn.o.bias", "mlp.out.weight", "mlp.out.bias"):
        state[f"blocks.1.{name}"].zero_()
    zeroed = wt.load_toy_transformer(config.transformer_config(), state)(tokens)
    assert torch.allclose(hooked, zeroed, atol=1e-5)
    assert not torch.allclose(hooked, model(tokens), atol=1e-3)


def test_ablating_a_head_equals_zeroing_its_output_columns(tiny_transformer):
    config, model = tiny_transformer
    tokens = wt.make_batch(config, 3, step_generator(0, 3)).tokens
    hooked = geo.logits_with_hooks(model, tokens, geo.ablation_hooks(head=(0, 1)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    d_head = config.d_model // config.n_heads
    state["blocks.0.attn.o.weight"][:, d_head:2 * d_head] = 0                 # head 1's slice of W_O
    zeroed = wt.load_toy_transformer(config.transformer_config(), state)(tokens)
    assert torch.allclose(hooked, zeroed, atol=1e-5)


def test_qk_alignment_masks_the_future(tiny_transformer):
    config, model = tiny_transformer
    batch = wt.make_batch(config, 4, step_generator(0, 4))
    cache = geo.attention_and_qk(model, batch.tokens)
    cos = geo.qk_alignment(cache["q"], cache["k"], batch.positions)
    assert cos.shape == (2, len(batch.positions), batch.tokens.shape[1])
    assert torch.isnan(cos[:, 0, 1:]).all() and not torch.isnan(cos[:, -1, :batch.positions[-1] + 1]).any()
    assert (cos[~torch.isnan(cos)].abs() <= 1 + 1e-9).all()


def test_bijection_eval_batch_is_fixed():
    config = wt.WindTunnelConfig()
    assert torch.equal(wt.eval_batch(config, 8).tokens, wt.eval_batch(config, 8).tokens)
    assert bijection.BijectionTask(config.vocab).n_pairs == len(wt.eval_batch(config, 8).positions)


def test_smoke_runs_feed_every_measurement_the_pages_check(tmp_store):
    from labpy.experiments.wind_tunnels_report import measurements, report
    rep = report("smoke")
    assert set(rep.runs.entries) == {f"{t}-{m}-s0" for t in ("bijection", "hmm") for m in ("transformer", "mlp")}
    hmm_run = rep.entry("hmm", "transformer")
    assert set(hmm_run.table("lengths").test_length) == {4, 6, 8, 10}          # K, 1.5K, 2K, 2.5K
    assert rep.entry("bijection", "mlp").checkpoint_names() == []              # MLPs store no weights
    assert len(rep.entry("bijection", "transformer").checkpoint_names()) == 3   # the dissociation checkpoints
    out = measurements(rep)
    for key in ("bijection_gap_mae", "hmm_transformer_kl", "hmm_kl_test_length", "key_cos_trained", "bijection_pc1_ratio",
                "hmm_pc1_pearson_within", "elimination_kl", "frame_head_ratio", "layer_ablation_min_factor",
                "hmm_top2_kl_test", "attention_change_left"):
        assert math.isfinite(out[key]), key
    assert out["ablation_base_kl"] == pytest.approx(out["bijection_transformer_kl"], rel=0.5)  # 500 vs 64 sequences


def test_soft_targets_train_on_the_exact_posterior_and_hard_labels_on_the_sample():
    """`wind_tunnel_targets` changes only the loss: cross-entropy against the posterior instead of the sampled value."""
    from labpy.experiments.wind_tunnel_targets import TargetsConfig

    soft = TargetsConfig(vocab=5, n_layers=1, d_model=16, n_heads=2, d_mlp=16)
    hard = TargetsConfig(**{**soft.__dict__, "targets": "hard"})
    batch = wt.make_batch(soft, 8, step_generator(0, 0))
    model = wt.build_model(soft)
    log_q = torch.log_softmax(wt.predict_logits(model, batch), -1)                   # (B, P, V)
    by_hand_soft = -(batch.posterior * log_q).sum(-1).mean()
    by_hand_hard = -log_q.gather(-1, batch.labels.unsqueeze(-1)).mean()
    assert torch.allclose(wt.loss_on(soft, model, batch), by_hand_soft)
    assert torch.allclose(wt.loss_on(hard, model, batch), by_hand_hard)
    assert not torch.allclose(by_hand_soft, by_hand_hard)
    assert wt.WindTunnelConfig(task="bijection").hard_labels() and not wt.WindTunnelConfig(task="hmm").hard_labels()


def test_soft_target_runs_differ_from_the_stored_hard_runs_only_in_their_targets():
    from dataclasses import asdict

    from labpy.experiments import get_experiment

    hard = get_experiment("wind_tunnels").scales["cpu"]
    targets = get_experiment("wind_tunnel_targets").scales["cpu"]
    for label, soft in targets.items():
        kind = "paper_vocab" if label.startswith("bijection-v20-") else "twin"
        twin = asdict(hard["bijection-transformer-s0" if kind == "paper_vocab" else label.replace("-soft-", "-transformer-")])
        differ = {k for k, v in asdict(soft).items() if twin.get(k) != v}
        allowed = {"targets", "n_checkpoints"} | ({"vocab"} if kind == "paper_vocab" else set())
        assert differ <= allowed and soft.targets in ("soft", "hard"), (label, differ)
    assert {c.targets for l, c in targets.items() if l.startswith("bijection-v20-")} == {"soft", "hard"}


def test_a_bad_targets_value_is_one_clear_line():
    from labpy.errors import ConfigError
    from labpy.experiments.wind_tunnel_targets import TargetsConfig

    with pytest.raises(ConfigError, match=r"TargetsConfig\.targets = 'posterior' is out of range.*soft.*hard"):
        TargetsConfig(targets="posterior")
