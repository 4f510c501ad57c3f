"""bias_writer_inputs: the writes add up to the MLP's input stream, the split of a gate pre-activation against the
model's own, the neuron stand-in hook against a hand-computed MLP output, and the smoke run."""

import pytest
import torch

from labpy.experiments.bias_writer_inputs import BiasWriterInputsConfig, component_names, run, set_neurons
from labpy.experiments.registry import RunContext
from labpy.interp.hf_hooks import run_with_cache, run_with_hooks
from labpy.models.lm import load_lm


def _model():
    model, _ = load_lm("lab-lm:smoke")
    model.eval()
    tokens = torch.randint(0, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    return model, tokens


def test_writes_add_up_to_the_stream_the_mlp_reads_and_split_its_gate(tmp_store):
    model, tokens = _model()
    layer = model.config.num_hidden_layers - 1
    block = model.model.layers[layer]
    names = component_names(layer)
    wanted = [*names, f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.mlp.hook_pre"]
    _, cache = run_with_cache(model, tokens, wanted)
    stream = sum(cache[n] for n in names)
    assert torch.allclose(stream, cache[f"blocks.{layer}.hook_resid_pre"] + cache[f"blocks.{layer}.hook_attn_out"],
                          atol=1e-5)
    norm = block.post_attention_layernorm
    rms = stream.pow(2).mean(-1, keepdim=True).add(norm.variance_epsilon).sqrt()
    terms = sum((norm.weight * cache[n] / rms) @ block.mlp.gate_proj.weight[3] for n in names)     # (B, T)
    assert torch.allclose(terms, cache[f"blocks.{layer}.mlp.hook_pre"][..., 3], atol=1e-4)


def test_set_neurons_removes_exactly_their_columns_of_the_write(tmp_store):
    model, tokens = _model()
    layer = model.config.num_hidden_layers - 1
    mlp = model.model.layers[layer].mlp
    post, out = f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out"
    _, clean = run_with_cache(model, tokens, [post, out])
    value = torch.tensor([2.0, -1.0])
    _, patched = run_with_cache(model, tokens, [out], fwd_hooks=[(post, set_neurons([0, 5], value))])
    acts = clean[post].clone()
    acts[:, 1:, [0, 5]] = value
    assert torch.allclose(patched[out], acts @ mlp.down_proj.weight.T, atol=1e-5)
    assert torch.allclose(patched[out][:, 0], clean[out][:, 0])
    zeroed = run_with_hooks(model, tokens, [(post, set_neurons([0, 5], None))])
    assert not torch.allclose(zeroed, model(tokens).logits)


def test_smoke_run_is_exact_and_says_which_neurons_exist(tmp_store, tmp_path):
    from labpy import results

    entry = results("bias_writer_inputs", "smoke")["lab-lm"]
    neurons = entry.table("neurons")
    assert (neurons.hook_check < 1e-4).all()
    writers = entry.table("writers")
    assert writers.groupby(["kind", "neuron"]).abs_share.sum().sub(1).abs().max() < 1e-5
    assert writers.component.nunique() == entry.summary["n_components"]
    stand_ins = entry.table("stand_ins")
    assert (stand_ins[stand_ins.stand_in == "zeroed"].share_of_zeroing == 1).all()
    with pytest.raises(ValueError, match="neurons"):
        run(BiasWriterInputsConfig(model="lab-lm:smoke", neurons=(10_000,), n_windows=2, seq_len=8),
            RunContext(work_dir=tmp_path / "w"))
