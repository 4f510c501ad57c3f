"""The capture layer for Hugging Face decoders (`labpy.interp.hf_hooks`) against independent references: HF's own
`output_hidden_states`/`output_attentions`, TransformerLens 4's `TransformerBridge` on the same model, and a
hand computation of attention (RMSNorm, RoPE, grouped-query heads, causal softmax) from the weights."""

import copy
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from labpy.interp.hf_hooks import hook_names, kv_head_of, run_with_cache, run_with_hooks, zero_head

VOCAB, D, HEADS, KV, LAYERS = 50, 32, 4, 2, 2


def tiny(arch: str, attn: str = "eager") -> torch.nn.Module:
    """Random weights, grouped-query attention (4 query heads on 2 K/V heads); Qwen2 with non-zero q/k/v biases
    (the part an adapter could drop)."""
    torch.manual_seed(0)
    config_type, model_type = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    config = config_type(vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=64,
                         attn_implementation=attn)
    model = model_type(config).eval()
    if arch == "qwen2":
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    return model


TOKENS = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))   # (B, T)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cache_matches_hf_hidden_states_and_attentions(arch):
    model = tiny(arch)
    with torch.no_grad():
        hf = model(TOKENS, output_hidden_states=True, output_attentions=True)
    logits, cache = run_with_cache(model, TOKENS)
    assert set(cache) == set(hook_names(model))
    torch.testing.assert_close(logits, hf.logits, rtol=0, atol=1e-6)
    # HF's hidden states: the embeddings, each block's output but the last, then the final norm's output
    torch.testing.assert_close(cache["hook_embed"], hf.hidden_states[0], rtol=0, atol=1e-6)
    for layer in range(LAYERS - 1):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], hf.hidden_states[layer + 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(cache["ln_final.hook_normalized"], hf.hidden_states[-1], rtol=0, atol=1e-6)
    for layer in range(LAYERS):
        torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_pattern"], hf.attentions[layer], rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_residual_stream_adds_up(arch):
    """resid_post = resid_pre + attn_out + mlp_out; the next block reads it; W_O reads z; W_down reads
    act(pre) * pre_linear; the logits read the final norm."""
    model = tiny(arch)
    logits, c = run_with_cache(model, TOKENS)
    for layer, block in enumerate(model.model.layers):
        p = f"blocks.{layer}."
        torch.testing.assert_close(c[p + "hook_resid_post"],
                                   c[p + "hook_resid_pre"] + c[p + "hook_attn_out"] + c[p + "hook_mlp_out"])
        if layer + 1 < LAYERS:
            torch.testing.assert_close(c[f"blocks.{layer + 1}.hook_resid_pre"], c[p + "hook_resid_post"])
        with torch.no_grad():
            torch.testing.assert_close(block.self_attn.o_proj(c[p + "attn.hook_z"].flatten(-2)), c[p + "hook_attn_out"])
            torch.testing.assert_close(block.mlp.act_fn(c[p + "mlp.hook_pre"]) * c[p + "mlp.hook_pre_linear"],
                                       c[p + "mlp.hook_post"])
            torch.testing.assert_close(block.mlp.down_proj(c[p + "mlp.hook_post"]), c[p + "hook_mlp_out"])
    with torch.no_grad():
        torch.testing.assert_close(model.lm_head(c["ln_final.hook_normalized"]), logits)


def _rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding by hand, HF's half-split convention: (B, H, T, h)."""
    h, T = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / theta ** (torch.arange(0, h, 2, dtype=torch.float32) / h)          # (h/2,)
    angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None]            # (T, h/2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)    # (T, h)
    x1, x2 = x[..., : h // 2], x[..., h // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_patterns_match_a_hand_computation_with_grouped_query_heads(arch):
    model = tiny(arch)
    _, c = run_with_cache(model, TOKENS)
    block = model.model.layers[1]
    attn, eps = block.self_attn, model.config.rms_norm_eps
    theta = model.config.rope_parameters["rope_theta"] if getattr(model.config, "rope_parameters", None) \
        else model.config.rope_theta
    h = D // HEADS
    with torch.no_grad():
        x = c["blocks.1.hook_resid_pre"]                                                   # (B, T, d)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * block.input_layernorm.weight
        q = attn.q_proj(x).view(2, 7, HEADS, h).transpose(1, 2)                            # (B, H, T, h)
        k = attn.k_proj(x).view(2, 7, KV, h).transpose(1, 2)                               # (B, KV, T, h)
        q, k = _rope(q, theta), _rope(k, theta)
        k = k[:, kv_head_of(model)]                                                        # (B, H, T, h)
        scores = q @ k.transpose(-1, -2) / math.sqrt(h)                                    # (B, H, T, T)
        scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    assert kv_head_of(model).tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(c["blocks.1.attn.hook_pattern"], scores.softmax(-1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_transformer_lens_bridge_agrees(arch, tmp_path):
    """TransformerLens 4 booted on the same HF model (no hub call) gives the same logits and activations under
    the same names: the lab's hook names are TransformerLens' own."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    model = tiny(arch)
    logits, cache = run_with_cache(model, TOKENS)          # first: booting the bridge rewrites the model it wraps
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0", eos_token="t1", bos_token="t2").save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    kinds = [type(m).__name__ for m in model.modules()]
    bridge = TransformerBridge.boot_transformers(str(tmp_path), hf_model=copy.deepcopy(model), device="cpu",
                                                 tokenizer=AutoTokenizer.from_pretrained(tmp_path))
    assert [type(m).__name__ for m in model.modules()] == kinds    # the lab's model stayed plain Hugging Face
    tl_logits, tl_cache = bridge.run_with_cache(TOKENS)
    torch.testing.assert_close(logits, tl_logits, rtol=0, atol=1e-5)
    for name in cache:
        if name in tl_cache:
            torch.testing.assert_close(cache[name], tl_cache[name].reshape(cache[name].shape), rtol=0, atol=1e-5,
                                       msg=lambda m, n=name: f"{n}: {m}")
    shared = set(cache) & set(tl_cache.keys())
    assert {"blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.1.hook_mlp_out",
            "blocks.1.mlp.hook_post", "blocks.1.hook_resid_post"} <= shared


def test_zero_ablating_a_head_removes_exactly_its_write():
    """Removing head 3 of block 0 changes what attention writes by -z_3 W_O[:, head 3] (by hand), and nothing
    before it."""
    model = tiny("llama")
    _, clean = run_with_cache(model, TOKENS)
    _, ablated = run_with_cache(model, TOKENS, fwd_hooks=[("blocks.0.attn.hook_z", zero_head(3))])
    h = D // HEADS
    w_o = model.model.layers[0].self_attn.o_proj.weight                                   # (d, H*h)
    with torch.no_grad():
        head_write = clean["blocks.0.attn.hook_z"][:, :, 3] @ w_o[:, 3 * h:4 * h].T          # (B, T, d)
    torch.testing.assert_close(ablated["blocks.0.hook_attn_out"], clean["blocks.0.hook_attn_out"] - head_write)
    torch.testing.assert_close(ablated["blocks.0.hook_resid_pre"], clean["blocks.0.hook_resid_pre"])
    assert not torch.allclose(ablated["blocks.1.hook_resid_post"], clean["blocks.1.hook_resid_post"])


def test_patching_the_whole_residual_stream_restores_the_clean_run():
    """Denoising at the input of block 0 with the clean run's residual stream gives the clean logits exactly
    (all positions, or the one corrupted position alone); a patch at a later position leaves earlier positions
    untouched (causality)."""
    model = tiny("qwen2")
    corrupted = TOKENS.clone()
    corrupted[:, 2] = (corrupted[:, 2] + 1) % VOCAB
    clean_logits, clean = run_with_cache(model, TOKENS, "blocks.0.hook_resid_pre")
    patched = run_with_hooks(model, corrupted, [("blocks.0.hook_resid_pre",
                                                lambda x, hook: clean["blocks.0.hook_resid_pre"])])
    torch.testing.assert_close(patched, clean_logits)
    corrupted_logits = run_with_hooks(model, corrupted, [])
    assert (corrupted_logits - clean_logits)[:, 2:].abs().max() > 1e-3
    torch.testing.assert_close(corrupted_logits[:, :2], clean_logits[:, :2])

    def patch(position: int, value: torch.Tensor):
        def hook(x, info):
            x = x.clone()
            x[:, position] = value
            return x
        return hook

    # the one corrupted position, denoised alone, restores every position's logits
    only_2 = run_with_hooks(model, corrupted, [("blocks.0.hook_resid_pre", patch(2, clean["blocks.0.hook_resid_pre"][:, 2]))])
    torch.testing.assert_close(only_2, clean_logits)
    # a change at position 5 reaches positions 5+ and nothing before it
    late = run_with_hooks(model, corrupted, [("blocks.0.hook_resid_pre", patch(5, torch.ones(D)))])
    torch.testing.assert_close(late[:, :5], corrupted_logits[:, :5])
    assert (late[:, 5:] - corrupted_logits[:, 5:]).abs().max() > 1e-4


def test_errors_name_the_fix():
    model = tiny("llama")
    with pytest.raises(KeyError, match="no hook point 'blocks.0.hook_nothing'.*hook_names"):
        run_with_hooks(model, TOKENS, [("blocks.0.hook_nothing", lambda x, h: None)])
    with pytest.raises(ValueError, match="read-only.*hook_z"):
        run_with_hooks(model, TOKENS, [("blocks.0.attn.hook_pattern", lambda x, h: x * 0)])
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        run_with_cache(tiny("llama", attn="sdpa"), TOKENS, "blocks.0.attn.hook_pattern")
    with pytest.raises(TypeError, match="not a Llama/Qwen2-style"):
        run_with_cache(torch.nn.Linear(2, 2), TOKENS)
