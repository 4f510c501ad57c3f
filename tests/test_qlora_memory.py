"""The memory model against hand counts and against measurements; smoke runs of the QLoRA, memory-model and
fine-tuning-benchmark experiments."""

from __future__ import annotations

import pytest
import torch

from labpy.memory import (ALL_LINEAR, ATTN_TARGETS, QWEN25_7B, Arch, Setup, activation_bytes, activation_terms,
                          fit_table, lora_params, optimizer_bytes, peak_bytes, resident_model_bytes,
                          rope_buffer_bytes, saved_tensor_bytes, tensor_peak_bytes, training_growth_bytes,
                          weight_bytes)

# hidden 8, 2 layers, 2 heads (head_dim 4), 1 K/V head (kv_dim 4), FFN 16, vocabulary 32, untied head
TINY = Arch(hidden=8, layers=2, heads=2, kv_heads=1, intermediate=16, vocab=32)


def test_parameter_counts_by_hand():
    # per layer: q 8·8, k 8·4, v 8·4, o 8·8, gate 8·16, up 8·16, down 16·8
    assert TINY.linear_params() == 2 * (64 + 32 + 32 + 64 + 128 + 128 + 128)
    # embedding 32·8, head 32·8, per layer two norms (8 each) and q/k/v biases (8+4+4), final norm 8
    assert TINY.other_params() == 256 + 256 + 2 * (16 + 16) + 8
    # LoRA r=2 on q, k, v, o: r·(d_in + d_out) = 2·(16 + 12 + 12 + 16) per layer
    setup = Setup(rank=2, targets=ATTN_TARGETS)
    assert lora_params(TINY, setup) == 2 * 2 * (16 + 12 + 12 + 16)
    assert optimizer_bytes(TINY, setup) == {"gradients": 4 * 224, "Adam moments": 8 * 224}
    full = optimizer_bytes(TINY, Setup(rank=0))
    assert full["Adam moments"] == 8 * (1152 + 584)


def test_weight_bytes_by_hand():
    fp32 = weight_bytes(TINY, Setup(rank=2))
    assert fp32["linear weights"] == 4 * 1152 and fp32["quantization constants"] == 0
    nf4 = weight_bytes(TINY, Setup(quant="4bit", rank=2))
    assert nf4["linear weights"] == 1152 // 2
    # per linear: one 8-bit absmax per 64 weights, one fp32 per 256 absmaxes, fp32 offset, 256 + 16 code entries
    blocks = [1, 1, 1, 1, 2, 2, 2]
    assert nf4["quantization constants"] == 2 * sum(b + 4 + 4 + 1024 + 64 for b in blocks)
    int8 = weight_bytes(TINY, Setup(quant="8bit", rank=2))
    assert int8["quantization constants"] == 2 * 4 * (8 + 4 + 4 + 8 + 16 + 16 + 8)   # one fp32 scale per row


def test_activation_terms_by_hand():
    sdpa = activation_terms(TINY, Setup(rank=2, targets=ATTN_TARGETS, attn="sdpa"), seq_len=10)
    # norm 8+1; shared q/k/v input 8; q 8, k 4, v 4, output 8, log-sum-exp 2; norm 8+1; gate, up, act 3·16;
    # A outputs 4·2
    assert sum(sdpa.values()) == 9 + 8 + (8 + 4 + 4 + 8 + 2) + 9 + 48 + 8
    eager = activation_terms(TINY, Setup(rank=2, targets=ATTN_TARGETS, attn="eager"), seq_len=10)
    # q, k^T and v repeated to both heads (8 each), probabilities 2 heads · 10 keys, o_proj input 8
    assert sum(eager.values()) == 9 + 8 + 24 + 20 + 8 + 9 + 48 + 8
    first = activation_terms(TINY, Setup(rank=2, targets=("q_proj", "v_proj"), attn="eager"), 10, first_layer=True)
    # nothing below layer 0 trains: no input norm; k has no gradient, so q @ k^T keeps only k^T
    assert first["input norm"] == 0 and first["attention q, k, v, output"] == 8 + 8
    acts = activation_bytes(TINY, Setup(rank=2, grad_checkpointing=True), batch=3, seq_len=10)
    assert acts["decoder layers"] == 2 * 30 * 8 * 4          # checkpointing keeps each layer's input only
    assert acts["loss log-probabilities"] == 30 * 32 * 4


def test_peak_is_weights_adam_and_the_larger_of_activations_or_gradients():
    lora = peak_bytes(TINY, Setup(rank=2), 4, 16)
    acts = sum(v for k, v in lora.items() if k.startswith(("activations", "transient")))
    weights = sum(weight_bytes(TINY, Setup(rank=2)).values())
    assert lora["total"] == weights + lora["Adam moments"] + acts
    tiny_batch = peak_bytes(TINY, Setup(rank=0), 1, 1)        # full fine-tuning of one token: gradients win
    assert tiny_batch["total"] == sum(weight_bytes(TINY, Setup(rank=0)).values()) + tiny_batch["Adam moments"] \
        + tiny_batch["gradients"]


def test_qwen_7b_numbers_and_fit_table():
    assert QWEN25_7B.n_params() == 7_615_616_512                # Qwen2.5-7B's published 7.61B parameters
    setup = Setup(quant="4bit", rank=16, targets=ALL_LINEAR, compute_bytes=2)
    table = fit_table(QWEN25_7B, {"plain": setup, "gc": Setup(**{**setup.__dict__, "grad_checkpointing": True})},
                      [1, 2, 4], [512, 2048], capacity_bytes=16 * 2**30, reserve_bytes=1.5 * 2**30)
    assert len(table) == 12
    for _, group in table.groupby(["setup", "seq_len"]):
        assert group.peak_gib.is_monotonic_increasing           # more sequences, more memory
    plain, gc = (table[table.setup == s].set_index(["batch", "seq_len"]).peak_gib for s in ("plain", "gc"))
    assert (gc < plain).all()
    # fits is exactly "peak <= capacity - reserve"
    assert ((table.peak_gib <= 14.5) == table.fits).all()


def _tiny_qwen(tmp_path, **overrides):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    fields = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False, use_cache=False) | overrides
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**fields)).save_pretrained(tmp_path)
    return Arch.from_config(Qwen2Config(**fields))


@pytest.mark.parametrize("quant, attn, targets, rank, gc", [
    (None, "eager", ATTN_TARGETS, 4, False),
    (None, "sdpa", ("q_proj", "v_proj"), 8, False),
    (None, "sdpa", ATTN_TARGETS, 0, False),
    ("4bit", "sdpa", ALL_LINEAR, 4, False),
    ("4bit", "sdpa", ATTN_TARGETS, 4, True),
])
def test_model_predicts_saved_tensors_and_resident_weights(tmp_path, quant, attn, targets, rank, gc):
    """Measured: autograd's saved tensors during a real step, and the bytes a loaded model holds."""
    from labpy.finetune import lm_loss
    from labpy.models.lm import load_lm
    from labpy.models.lora import add_lora

    arch = _tiny_qwen(tmp_path)
    model, _ = load_lm(str(tmp_path), quant, attn_implementation=attn)
    if rank:
        model = add_lora(model, rank, targets=targets, gradient_checkpointing=gc)
    else:
        model.requires_grad_(True)
    model.train()
    batch = torch.randint(0, 256, (3, 21), generator=torch.Generator().manual_seed(0))   # (B, T+1)
    measured, rows = saved_tensor_bytes(model, lambda: lm_loss(model, batch))
    setup = Setup(quant=quant, rank=rank, targets=targets, grad_checkpointing=gc, attn=attn)
    predicted = sum(activation_bytes(arch, setup, 3, 20).values())
    assert abs(predicted / measured - 1) < 1e-3, rows          # exact up to a few bytes of storage padding
    resident = resident_model_bytes(model) - rope_buffer_bytes(model)
    assert resident == sum(weight_bytes(arch, setup).values())
    if quant == "4bit":
        assert resident > model.get_memory_footprint()        # HF's footprint leaves out the nf4 constants


def test_model_predicts_the_peak_of_live_tensors(tmp_path):
    """Measured by torch.profiler's memory timeline over two real LoRA steps (AdamW), from scratch."""
    from labpy.finetune import lm_loss
    from labpy.models.lm import load_lm
    from labpy.models.lora import add_lora

    arch = _tiny_qwen(tmp_path, hidden_size=128, intermediate_size=384, vocab_size=2048)
    model = add_lora(load_lm(str(tmp_path), attn_implementation="sdpa")[0], 8).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = torch.randint(0, 2048, (4, 65), generator=torch.Generator().manual_seed(0))

    def steps():
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            lm_loss(model, batch).backward()
            optimizer.step()

    measured = tensor_peak_bytes(steps)
    predicted = training_growth_bytes(arch, Setup(rank=8, attn="sdpa"), 4, 64)
    assert abs(predicted / measured - 1) < 0.05, (predicted, measured)   # measured: within 0.1% at this size


# ---- smoke runs of the experiments ----

def test_qlora_smoke(tmp_store):
    from labpy.experiments import qlora, qlora_analysis, results

    runs = results("qlora", scale="smoke")
    assert set(runs.entries) == {"fp32", "8bit", "4bit", "timing"}
    m = qlora_analysis.measurements(runs)
    assert m["footprint_4bit"] < m["footprint_8bit"] < m["footprint_fp32"]
    assert 0 < m["mean_rel_error_8bit"] < m["mean_rel_error_4bit"] < 0.3
    errors = runs["4bit"].table("quant_error")
    assert set(errors.kind) == set(ALL_LINEAR) and len(errors) == 7 * errors.layer.nunique()
    evals = runs["fp32"].table("evals")
    assert {"loss_source", "loss_pydoc"} <= set(evals.columns) and evals.step.iloc[0] == 0
    timing = runs["timing"].table("timing")
    assert set(timing.base) == set(qlora.QUANTS) and m["step_time_ratio_4bit"] > 0


def test_memory_model_smoke(tmp_store):
    from labpy.experiments import results

    entry = results("memory_model", scale="smoke")["check"]
    cases = entry.table("cases")
    assert set(cases.attn) == {"sdpa", "eager"} and cases.saved_error.abs().max() < 1e-3 and cases.weights_error.abs().max() == 0
    assert cases.tensors_error.abs().max() < 0.1
    fits = entry.table("fits")
    assert set(fits.setup) == {"no checkpointing", "gradient checkpointing"}
    assert entry.summary["max_tokens_gc"] >= entry.summary["max_tokens_nogc"]


def test_finetune_benchmark_smoke_computes_the_same_step(tmp_store):
    from labpy.experiments import results

    entry = results("finetune_benchmark", scale="smoke")["ratio"]
    s = entry.summary
    assert s["first_loss_labpy"] == pytest.approx(s["first_loss_hf"], abs=1e-5)   # the same step on both sides
    assert 0.2 < s["throughput_ratio"] < 5
    assert set(entry.table("blocks").side) == {"labpy.train", "HF Trainer"}
