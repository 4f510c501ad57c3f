"""The lab's toy transformer against the independent reference it replaced, TransformerLens 4's TransformerBridge:
same initial weights, same function (logits and every hook both share), stored checkpoints read the same, and
hooks that edit activations take effect on the paths the model fuses when nobody listens."""

from __future__ import annotations

import pytest
import torch

from labpy.experiments.registry import results
from labpy.experiments.toy_transformer_analysis import MODEL_CONFIG
from labpy.models.toy import (ToyTransformerConfig, build_bridge_transformer, build_toy_transformer,
                              load_bridge_transformer, load_toy_transformer)

ARCHITECTURES = {
    "attention-only LN": ToyTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=20, n_ctx=16),
    "MLP RMS task head": ToyTransformerConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, d_vocab=12, n_ctx=16,
                                              attn_only=False, d_mlp=48, normalization="RMS", d_vocab_out=5),
    "MLP no norm": ToyTransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_vocab=10, n_ctx=8,
                                        attn_only=False, normalization=None),
}


def _tokens(config: ToyTransformerConfig, batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, config.d_vocab, (batch, config.n_ctx), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_same_seed_same_initial_weights_as_the_bridge(name):
    config = ARCHITECTURES[name]
    ours, bridge = build_toy_transformer(config, seed=5).state_dict(), build_bridge_transformer(config, seed=5).state_dict()
    assert ours.keys() == bridge.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], bridge[key], rtol=0, atol=0, msg=key)
    trainable = lambda m: sum(p.numel() for p in m.parameters())
    assert trainable(build_toy_transformer(config, 0)) == trainable(build_bridge_transformer(config, 0))
    assert not torch.equal(build_toy_transformer(config, 5).embed.weight, build_toy_transformer(config, 6).embed.weight)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_same_function_and_activations_as_the_bridge(name):
    config = ARCHITECTURES[name]
    bridge = build_bridge_transformer(config, seed=1).eval()
    with torch.no_grad():   # trained-looking weights: the zero biases and unit gains of a fresh model hide bugs
        for p in bridge.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    ours = load_toy_transformer(config, bridge.state_dict())
    tokens = _tokens(config)
    bridge_logits, bridge_cache = bridge.run_with_cache(tokens)
    torch.testing.assert_close(ours(tokens), bridge_logits, rtol=0, atol=1e-5)      # the fused path
    logits, cache = ours.run_with_cache(tokens)                                        # the path every hook sees
    torch.testing.assert_close(logits, bridge_logits, rtol=0, atol=1e-5)
    shared = [k for k in cache.keys() if k in bridge_cache.keys()]
    assert set(cache.keys()) - set(shared) == set(), "every hook of ours has the bridge's name"
    per_block = ["hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores",
                 "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_post"]
    per_block += [] if config.attn_only else ["hook_resid_mid", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out"]
    per_block += [] if config.normalization is None else ["ln1.hook_scale", "ln1.hook_normalized", "ln1.hook_out"]
    needed = ["hook_embed", "hook_pos_embed", "hook_unembed"] + [f"blocks.{l}.{n}" for l in range(config.n_layers)
                                                                for n in per_block]
    needed += [] if config.normalization is None else ["ln_final.hook_scale", "ln_final.hook_normalized"]
    assert set(needed) <= set(shared), sorted(set(needed) - set(shared))
    for key in shared:
        if key.endswith("hook_attn_scores"):   # the bridge's hook holds the pattern; ours the masked scores
            torch.testing.assert_close(cache[key].softmax(-1), bridge_cache[key], rtol=0, atol=1e-5)
            continue
        torch.testing.assert_close(cache[key], bridge_cache[key], rtol=0, atol=1e-5, msg=key)
    for weight in ("W_E", "W_pos", "W_U", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_O"):
        torch.testing.assert_close(getattr(ours, weight), getattr(bridge, weight), rtol=0, atol=0, msg=weight)


def test_weight_views_reproduce_the_hooked_activations():
    """W_Q and W_O as TransformerLens lays them out: recompute q and a head's write by hand."""
    config = ARCHITECTURES["attention-only LN"]
    model = build_toy_transformer(config, seed=2).eval()
    _, cache = model.run_with_cache(_tokens(config))
    x = cache["blocks.1.ln1.hook_out"]                                          # (B, T, d)
    q = torch.einsum("btd,hde->bthe", x, model.W_Q[1]) + model.b_Q[1]                 # (B, T, H, h)
    torch.testing.assert_close(q, cache["blocks.1.attn.hook_q"], rtol=0, atol=1e-5)
    writes = torch.einsum("bthe,hed->btd", cache["blocks.1.attn.hook_z"], model.W_O[1]) + model.b_O[1]
    torch.testing.assert_close(writes, cache["blocks.1.hook_attn_out"], rtol=0, atol=1e-5)


EDITS = {   # a hook per point the fused kernels skip, each changing what it sees
    "blocks.0.attn.hook_attn_scores": lambda x, hook: x / 4,
    "blocks.0.attn.hook_pattern": lambda x, hook: torch.tril(torch.ones_like(x)) / torch.tril(torch.ones_like(x)).sum(
        -1, keepdim=True),
    "blocks.0.ln1.hook_scale": lambda x, hook: 2 * x,
    "blocks.0.ln1.hook_normalized": lambda x, hook: -x,
}


@pytest.mark.parametrize("norm", ["LN", "RMS"])
@pytest.mark.parametrize("point", EDITS)
def test_a_hook_that_edits_a_fused_point_takes_effect(point, norm):
    """Fused kernels run only while nobody listens: an editing hook must switch to the written-out path."""
    config = ToyTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=20, n_ctx=16, normalization=norm)
    model = build_toy_transformer(config, seed=3).eval()
    tokens = _tokens(config)
    plain = model(tokens)
    edited = model.run_with_hooks(tokens, fwd_hooks=[(point, EDITS[point])])
    assert (edited - plain).abs().max() > 1e-3
    torch.testing.assert_close(model(tokens), plain)       # hooks removed: the fused path again, same answer


def test_a_backward_hook_on_the_pattern_sees_its_gradient():
    config = ARCHITECTURES["attention-only LN"]
    model = build_toy_transformer(config, seed=4)
    seen = []
    model.add_hook("blocks.1.attn.hook_pattern", lambda grad, hook: seen.append(tuple(grad.shape)), dir="bwd")
    model(_tokens(config)).sum().backward()
    model.reset_hooks()
    assert seen == [(3, config.n_heads, config.n_ctx, config.n_ctx)]


def test_building_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_toy_transformer(ARCHITECTURES["MLP RMS task head"], seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_bad_normalization_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"normalization='layer' is not one of \('LN', 'RMS', None\)"):
        ToyTransformerConfig(normalization="layer")


@pytest.mark.parametrize("experiment, label", [("induction", "two_layer"), ("wind_tunnels", "bijection-transformer-s0"),
                                               ("wind_tunnels", "hmm-transformer-s0")])
def test_stored_checkpoints_give_the_bridges_logits(experiment, label):
    """Runs stored before this model existed (trained on the bridge) read the same through it."""
    entry = results(experiment, scale="cpu")[label]                     # the committed store
    model_config = getattr(entry.config, MODEL_CONFIG[experiment])()
    state = entry.step_checkpoint(entry.checkpoint_steps()[-1])
    tokens = _tokens(model_config, batch=8)
    torch.testing.assert_close(load_toy_transformer(model_config, state)(tokens),
                               load_bridge_transformer(model_config, state)(tokens), rtol=0, atol=1e-5)
