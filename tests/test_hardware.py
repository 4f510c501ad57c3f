"""The hardware-decision arithmetic (`labpy.hardware`) against hand counts, against `labpy.memory`, and its
calculator's errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from labpy import hardware as hw
from labpy.errors import ConfigError, UnknownChoiceError
from labpy.memory import ATTN_TARGETS, GIB, QWEN25_7B, Arch, Setup, lora_params, peak_bytes

# hidden 8, 2 layers, 2 heads (head_dim 4), 1 K/V head (kv_dim 4), FFN 16, vocabulary 32, untied head
TINY = Arch(hidden=8, layers=2, heads=2, kv_heads=1, intermediate=16, vocab=32)
# per layer: q 8·8, k 8·4, v 8·4, o 8·8, gate 8·16, up 8·16, down 16·8; plus the unembedding 32·8
TINY_MATMUL = 2 * (64 + 32 + 32 + 64 + 128 + 128 + 128) + 32 * 8


def test_matmul_weights_by_hand():
    c = hw.Compute.from_arch(TINY)
    assert (c.matmul_params, c.layers, c.attn_width) == (TINY_MATMUL, 2, 8)


def test_forward_and_training_flops_by_hand():
    tokens, T = 10, 5
    no_attention = hw.Compute(TINY_MATMUL)
    assert no_attention.forward_flops(tokens, T) == 2 * TINY_MATMUL * tokens                 # 2·N·tokens
    assert hw.step_flops(no_attention, tokens, T) == 6 * TINY_MATMUL * tokens                 # 6·N·tokens
    # attention: QKᵀ and AV, each 2·T·width FLOPs per token per layer, forward; twice that backward
    attention = 4 * 2 * T * 8 * tokens
    c = hw.Compute.from_arch(TINY)
    assert c.forward_flops(tokens, T) == 2 * TINY_MATMUL * tokens + attention
    assert hw.step_flops(c, tokens, T) == 6 * TINY_MATMUL * tokens + 3 * attention


def test_lora_and_checkpointing_flops_by_hand():
    tokens, T, adapters = 12, 4, lora_params(TINY, Setup(rank=2, targets=ATTN_TARGETS))
    c = hw.Compute(TINY_MATMUL)
    # frozen weights: forward 2N, backward (input gradients only) 2N; adapters 6 per weight per token
    lora = hw.step_flops(c, tokens, T, full=False, adapter_params=adapters)
    assert lora == 4 * TINY_MATMUL * tokens + 6 * adapters * tokens
    # gradient checkpointing runs the forward a second time
    again = hw.step_flops(c, tokens, T, full=False, adapter_params=adapters, recompute=True)
    assert again - lora == 2 * TINY_MATMUL * tokens + 2 * adapters * tokens


def test_quoted_shapes_give_the_published_parameter_counts():
    """The shapes copied from each config.json reproduce the parameter counts the model cards state."""
    published = {"SmolLM2-135M": 134_515_008, "Qwen2.5-0.5B": 494_032_768, "Qwen2.5-1.5B": 1_543_714_304,
                 "Qwen2.5-3B": 3_085_938_688, "Qwen2.5-7B": 7_615_616_512, "Qwen2.5-14B": 14_770_033_664}
    assert {name: arch.n_params() for name, arch in hw.MODELS.items()} == published


@pytest.mark.parametrize("checkpointing", [True, False])
def test_calculator_memory_is_labpy_memory(checkpointing):
    """Same inputs, same bytes: the calculator uses the memory-model page's 7B recipe, not its own formulas."""
    from labpy.experiments.memory_model import qwen7b_setups

    setup = qwen7b_setups(16)["gradient checkpointing" if checkpointing else "no checkpointing"]
    estimate = hw.estimate_step("Qwen2.5-7B", "4bit", 16, 2, 1024, hw.USERS_CARD, checkpointing=checkpointing)
    assert estimate.parts == peak_bytes(QWEN25_7B, setup, 2, 1024)
    assert estimate.peak_gib == peak_bytes(QWEN25_7B, setup, 2, 1024)["total"] / GIB


def test_calculator_takes_an_arch_and_times_it_by_flops():
    card = hw.CARDS["H100 80GB"]
    estimate = hw.estimate_step(TINY, None, 0, 3, 7, card.name, checkpointing=False, mfu=0.5)
    assert estimate.parts == peak_bytes(TINY, hw.qlora_setup(0, None, False), 3, 7)
    flops = hw.step_flops(hw.Compute.from_arch(TINY), 21, 7)
    assert estimate.flops == flops
    assert estimate.seconds == max(flops / (card.bf16_tflops * 1e12 * 0.5), hw.STEP_FLOOR_S)
    assert estimate.usable_gib == card.memory_gib - hw.RESERVE_GIB and estimate.fits


def test_reserve_is_the_memory_model_pages():
    from labpy.experiments.memory_model import MemoryModelConfig

    assert hw.RESERVE_GIB == MemoryModelConfig().reserve_gib


@pytest.mark.parametrize("inputs, names", [
    (dict(batch=0), ["BATCH = 0", ">= 1"]),
    (dict(seq_len=2.5), ["SEQ_LEN = 2.5", "whole number"]),
    (dict(rank=-1), ["RANK = -1", "0 = full fine-tuning"]),
    (dict(rank=0), ["QUANT = '4bit'", "QUANT = None"]),
    (dict(mfu=30), ["MFU = 30", "(0, 1]"]),
    (dict(model=7e9), ["MODEL = 7000000000.0", "Qwen2.5-7B"]),
])
def test_a_bad_calculator_input_is_one_line_naming_it_and_the_fix(inputs, names):
    args = dict(model="Qwen2.5-7B", quant="4bit", rank=16, batch=1, seq_len=2048, card=hw.USERS_CARD, mfu=0.3)
    with pytest.raises(ConfigError) as err:
        hw.estimate_step(**{**args, **inputs})
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in names), message


@pytest.mark.parametrize("inputs, bad", [(dict(card="RTX 9999"), "RTX 9999"), (dict(quant="3bit"), "3bit"),
                                         (dict(model="GPT-5"), "GPT-5")])
def test_an_unknown_name_lists_the_choices(inputs, bad):
    args = dict(model="Qwen2.5-7B", quant="4bit", rank=16, batch=1, seq_len=2048, card=hw.USERS_CARD)
    with pytest.raises(UnknownChoiceError) as err:
        hw.estimate_step(**{**args, **inputs})
    assert bad in str(err.value) and "valid choices" in str(err.value) and "\n" not in str(err.value)


def test_capture_bytes_by_hand():
    parts = hw.capture_bytes(TINY, batch=3, seq_len=5, quant=None, act_bytes=2, param_bytes=2)
    assert parts["attention patterns"] == 2 * 2 * 5 * 5 * 3 * 2          # layers · heads · T² · B · bytes
    assert parts["residual stream"] == 3 * 3 * 5 * 8 * 2                  # (layers + 1) · B · T · d · bytes
    assert parts["weights"] == 2 * TINY.n_params()                        # bf16, nothing quantized
    assert parts["largest transient"] == max(3 * 5 * 32 * 4, 3 * 2 * 25 * 4 + 3 * 3 * 5 * 16 * 2)


def test_longest_capture_is_the_last_length_that_fits():
    t = hw.longest_capture(QWEN25_7B, 24, 1.5)
    budget = (24 - 1.5) * GIB
    assert t > 0 and sum(hw.capture_bytes(QWEN25_7B, 1, t).values()) <= budget
    assert sum(hw.capture_bytes(QWEN25_7B, 1, t + 256).values()) > budget
    assert hw.longest_capture(QWEN25_7B, 16) < t < hw.longest_capture(QWEN25_7B, 80)


def test_gpu_time_is_flops_at_the_efficiency_or_the_launch_floor():
    card = hw.CARDS[hw.USERS_CARD]
    assert hw.gpu_seconds(1e15, 1, card, mfu=0.5) == 1e15 / (card.bf16_tflops * 1e12 * 0.5)
    assert hw.gpu_seconds(1e6, 1000, card) == 1000 * hw.STEP_FLOOR_S


def test_a_stored_lab_lm_run_is_modelled_from_its_config():
    hf = {"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
          "intermediate_size": 16, "vocab_size": 32, "tie_word_embeddings": False}
    config = SimpleNamespace(steps=100, batch_size=4, seq_len=5)
    entry = SimpleNamespace(experiment="lab_lm", label="base", config=config, summary={"hf_config": hf})
    work = hw.model_entry(entry, {})
    tokens = 100 * 4 * 5
    assert (work.steps, work.tokens, work.kind) == (100, tokens, "training")
    assert work.flops == hw.step_flops(hw.Compute.from_arch(TINY), tokens, 5)
    assert hw.model_entry(SimpleNamespace(experiment="probes"), {}) is None
    assert "scikit-learn" in hw.left_out_reason("probes", "smollm2")
    assert "benchmark" in hw.left_out_reason("qlora", "timing")


def test_wind_tunnel_transformer_flops_by_hand():
    from labpy.experiments.registry import get_experiment

    config = get_experiment("wind_tunnels").scales["cpu"]["bijection-transformer-s0"]
    work = hw.wind_tunnel_workload(config)
    d, L, f, T = config.d_model, config.n_layers, config.d_mlp, 2 * (config.vocab - 1)
    n = L * (4 * d * d + 2 * d * f) + d * config.vocab                     # attention, MLP, unembedding
    tokens = config.steps * config.batch_size * T
    assert work.tokens == tokens
    assert work.flops == 6 * n * tokens + 3 * 4 * L * T * d * tokens


def test_cpu_matmul_rates_are_positive_and_quick():
    rates = hw.cpu_matmul_rates(sizes=(32, 64), seconds=0.05)
    assert list(rates["size"]) == [32, 64] and (rates.gflops > 0).all()
    assert 0 < hw.op_overhead_s(repeats=300) < 1e-3
