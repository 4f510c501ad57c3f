"""`load_lm` and `add_lora` on tiny Qwen2 checkpoints (grouped-query attention, random weights) written by
`save_pretrained`: exact round trips, 8-/4-bit loads checked against hand-made quantizers, QLoRA training,
parameter counts by hand, and the errors a user sees for a bad quant or a hub id offline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from labpy.errors import UnknownChoiceError
from labpy.models.lm import ModelUnavailableError, load_lm, quantized_linear_types
from labpy.models.lora import add_lora, lora_parameter_count, trainable_parameters

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 512, 128, 2, 4, 2, 256
HEAD_DIM = HIDDEN // HEADS
# hand counts from the config: the linear layers of one decoder layer as (d_in, d_out)
ATTN_SHAPES = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, KV_HEADS * HEAD_DIM),
               "v_proj": (HIDDEN, KV_HEADS * HEAD_DIM), "o_proj": (HIDDEN, HIDDEN)}
MLP_SHAPES = {"gate_proj": (HIDDEN, FFN), "up_proj": (HIDDEN, FFN), "down_proj": (FFN, HIDDEN)}
NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0])   # the NF4 code book (QLoRA paper, appendix E)


def _reference_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=128,
                         tie_word_embeddings=False, use_cache=False, attn_implementation="eager")
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["def load(name):\n    return open(name).read()\n" * 20, "The quick brown fox jumps over the lazy dog. " * 20]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(reference model, checkpoint folder with a tokenizer, checkpoint folder without one)."""
    model = _reference_model()
    with_tok, bare = tmp_path_factory.mktemp("tiny_tok"), tmp_path_factory.mktemp("tiny_bare")
    model.save_pretrained(with_tok)
    _tokenizer().save_pretrained(with_tok)
    model.save_pretrained(bare)
    return model, with_tok, bare


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))  # (B, T)


def _logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens).logits   # (B, T, V)


def test_round_trip_gives_identical_logits_and_tokenizer(tiny, tokens):
    reference, folder, bare = tiny
    model, tokenizer = load_lm(str(folder))
    assert torch.equal(_logits(model, tokens), _logits(reference, tokens))
    assert model.config.num_key_value_heads == KV_HEADS < model.config.num_attention_heads   # GQA survived
    assert model.config._attn_implementation == "eager" and not model.training
    text = "def load(name): return the quick fox"
    assert tokenizer(text)["input_ids"] == _tokenizer()(text)["input_ids"]
    assert load_lm(str(bare))[1] is None            # a checkpoint without tokenizer files


def test_8bit_load_matches_rowwise_absmax_int8(tiny, tokens):
    reference, folder, _ = tiny
    model, _ = load_lm(str(folder), quant="8bit")
    assert quantized_linear_types(model) == {"Linear8bitLt"}
    n_linear = sum(type(m).__name__ == "Linear8bitLt" for m in model.modules())
    assert n_linear == LAYERS * (len(ATTN_SHAPES) + len(MLP_SHAPES))      # lm_head stays full precision
    # weights: LLM.int8 keeps round(W · 127 / rowmax|W|); within one quantization step of a hand quantizer
    w = reference.model.layers[0].mlp.down_proj.weight.detach()
    layer = model.model.layers[0].mlp.down_proj
    scale = w.abs().amax(1, keepdim=True) / 127                              # (d_out, 1)
    dequant = layer.weight.data.float() * layer.weight.SCB[:, None] / 127
    assert (dequant - torch.round(w / scale) * scale).abs().max() <= 1.01 * scale.max()
    # logits: close to fp32 (measured max |Δ| 0.016 on logits of max |z| ~1)
    diff = (_logits(model, tokens) - _logits(reference, tokens)).abs().max().item()
    assert 0 < diff < 0.05
    assert model.get_memory_footprint() < 0.6 * reference.get_memory_footprint()


def _hand_nf4(w: torch.Tensor, block: int = 64) -> torch.Tensor:
    """NF4 by hand: blocks of 64 weights, each scaled by its absmax and rounded to the nearest code."""
    flat = w.reshape(-1, block)                                              # (n_blocks, 64)
    absmax = flat.abs().amax(1, keepdim=True)
    codes = (flat / absmax).unsqueeze(-1).sub(NF4).abs().argmin(-1)         # (n_blocks, 64)
    return (NF4[codes] * absmax).reshape(w.shape)


def test_4bit_load_is_nf4_with_double_quantization(tiny, tokens):
    from bitsandbytes.functional import dequantize_4bit

    reference, folder, _ = tiny
    model, _ = load_lm(str(folder), quant="4bit")
    assert quantized_linear_types(model) == {"Linear4bit"}
    layer = model.model.layers[1].self_attn.k_proj
    state = layer.weight.quant_state
    assert state.quant_type == "nf4" and state.nested and state.blocksize == 64
    w = reference.model.layers[1].self_attn.k_proj.weight.detach()
    dequant = dequantize_4bit(layer.weight.data, state).float()
    hand = _hand_nf4(w)
    # the hand quantizer keeps exact absmax; double quantization stores absmax in 8 bits, so codes agree
    # except where a weight sits near the midpoint of two codes
    assert (dequant - hand).norm() / w.norm() < 0.02
    assert 0.05 < ((dequant - w).norm() / w.norm()).item() < 0.15           # 4 bits cost ~10% relative error
    fp32 = _logits(reference, tokens)
    diff4 = (_logits(model, tokens) - fp32).abs().max().item()
    diff8 = (_logits(load_lm(str(folder), quant="8bit")[0], tokens) - fp32).abs().max().item()
    assert diff8 < diff4 < 0.4                                               # measured 0.19 (8-bit: 0.016)
    assert model.get_memory_footprint() < load_lm(str(folder), quant="8bit")[0].get_memory_footprint()


def test_4bit_logits_equal_a_fp32_model_with_the_dequantized_weights(tiny, tokens):
    """The independent reference: swap each linear layer's weight for its dequantized 4-bit version."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    _, folder, _ = tiny
    model, _ = load_lm(str(folder), quant="4bit")
    dense, _ = load_lm(str(folder))
    state = {f"{name}.weight": dequantize_4bit(m.weight.data, m.weight.quant_state).float()
             for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert not dense.load_state_dict(state, strict=False).unexpected_keys
    model.train()     # the training layout (eval mode would repack the weights for the CPU inference kernel)
    torch.testing.assert_close(_logits(model, tokens), _logits(dense, tokens), atol=1e-5, rtol=1e-5)


def test_trainable_parameters_equal_a_hand_count(tiny):
    _, folder, _ = tiny
    rank = 8
    hand = LAYERS * sum(rank * (d_in + d_out) for d_in, d_out in ATTN_SHAPES.values())
    assert hand == 2 * 8 * (256 + 192 + 192 + 256)
    for quant in (None, "4bit"):
        base, _ = load_lm(str(folder), quant=quant)
        assert lora_parameter_count(base, rank) == hand
        assert trainable_parameters(add_lora(base, rank)) == hand
    base, _ = load_lm(str(folder))
    mlp = add_lora(base, 2, targets=("gate_proj", "down_proj"))
    assert trainable_parameters(mlp) == LAYERS * 2 * (HIDDEN + FFN + FFN + HIDDEN)


def test_lora_on_a_4bit_base_trains_only_the_adapters(tiny):
    _, folder, _ = tiny
    base, _ = load_lm(str(folder), quant="4bit")
    model = add_lora(base, 4, alpha=8)
    batch = torch.randint(0, VOCAB, (4, 33), generator=torch.Generator().manual_seed(2))   # (B, T+1)
    model.eval()
    with torch.no_grad():     # the eval-then-train trap: an eval pass before training must not break it
        model(input_ids=batch[:, :-1])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    base_bytes = {n: m.weight.data.clone() for n, m in model.named_modules() if type(m).__name__ == "Linear4bit"}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(25):
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        model.eval()            # evaluate between steps, as finetune() does
        with torch.no_grad():
            model(input_ids=batch[:, :-1])
        model.train()
    assert losses[-1] < losses[0] - 0.5, losses
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert changed == {n for n, p in model.named_parameters() if "lora_B" in n or "lora_A" in n}
    for name, module in model.named_modules():
        if name in base_bytes:
            assert torch.equal(module.weight.data, base_bytes[name]), f"{name}: the 4-bit base changed"


def test_bad_quant_names_the_choices(tiny):
    with pytest.raises(UnknownChoiceError, match=r"unknown quant '3bit'.*valid choices: 4bit, 8bit, None"):
        load_lm(str(tiny[1]), quant="3bit")
    with pytest.raises(UnknownChoiceError, match="unknown quant 'nf4'"):
        load_lm("Qwen/Qwen2.5-7B", quant="nf4")      # validated before any lookup


def test_bad_targets_and_paths_are_named(tiny, tmp_path):
    base, _ = load_lm(str(tiny[1]))
    with pytest.raises(ValueError, match=r"\['qkv'\] are not modules.*q_proj"):
        add_lora(base, 4, targets=("qkv",))
    with pytest.raises(ModelUnavailableError, match="no config.json"):
        load_lm(str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="no model folder at './nowhere'"):
        load_lm("./nowhere")


def test_hub_id_offline_fails_fast_naming_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError(f"load_lm tried to reach the network: {args}")

    monkeypatch.setattr(socket, "create_connection", no_network)
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as error:
        load_lm("lab-test/not-cached-anywhere", quant="4bit")
    assert time.perf_counter() - start < 5
    message = str(error.value)
    for part in ("'lab-test/not-cached-anywhere'", "HF_HUB_OFFLINE", "huggingface-cli download lab-test/not-cached",
                 "HF_HOME", "local `save_pretrained` folder"):
        assert part in message


def test_hub_id_unreachable_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("no route")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(ModelUnavailableError, match="cannot be reached.*huggingface-cli download"):
        load_lm("lab-test/not-cached-anywhere")


CACHED_HUB_SCRIPT = """
import socket, torch
def no_network(*a, **k):
    raise AssertionError("network")
socket.create_connection = no_network
from labpy.models.lm import load_lm
model, tok = load_lm("lab-test/tiny-qwen2", quant="4bit")
print(type(model).__name__, tok is not None, model.config.num_key_value_heads)
"""


def test_hub_id_with_a_cached_copy_loads_offline(tiny, tmp_path):
    """A hand-built hub cache (models--org--name/snapshots/<rev>, refs/main) under HF_HOME loads offline."""
    _, folder, _ = tiny
    repo = tmp_path / "hub" / "models--lab-test--tiny-qwen2"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in Path(folder).iterdir():
        (snapshot / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", CACHED_HUB_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["Qwen2ForCausalLM", "True", str(KV_HEADS)]
