"""The neurons-and-values experiment: token classes by hand, a knockout that removes exactly one neuron's write,
Cohen's d against numpy, value vectors against a hand computation, and the smoke run's tables."""

import numpy as np
import torch

from labpy.experiments.ffn_neurons import cohens_d, token_class, value_capture, zero_neuron
from labpy.interp.hf_hooks import run_with_cache
from labpy.models.lm import load_lm


def test_token_classes():
    assert [token_class(t) for t in (" the", "The", " 42", "):", "\n\n", " __init__", "x2")] == [
        "lowercase word", "capitalised word", "digit", "punctuation", "whitespace", "other", "other"]


def test_cohens_d_matches_numpy():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 3, generator=g) + 1, torch.randn(70, 3, generator=g)
    pooled = np.sqrt((a.numpy().var(0, ddof=1) + b.numpy().var(0, ddof=1)) / 2)
    assert np.allclose(cohens_d(a, b).numpy(), (a.numpy().mean(0) - b.numpy().mean(0)) / pooled, atol=1e-5)


def test_knockout_removes_exactly_one_neurons_write_and_values_are_v_proj(tmp_store):
    model, _ = load_lm("lab-lm:smoke")
    tokens = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(1))
    layer, index = 1, 5
    captured: dict[int, torch.Tensor] = {}
    with torch.no_grad(), value_capture(model, [layer], captured):
        _, clean = run_with_cache(model, tokens, [f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out",
                                                  f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_attn_out"])
        _, knocked = run_with_cache(model, tokens, [f"blocks.{layer}.hook_mlp_out"],
                                    fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", zero_neuron(index))])
    down = model.model.layers[layer].mlp.down_proj.weight                                 # (d, f)
    neuron = clean[f"blocks.{layer}.mlp.hook_post"][..., index:index + 1]                  # (B, T, 1)
    expected = clean[f"blocks.{layer}.hook_mlp_out"] - neuron * down[:, index]
    assert torch.allclose(knocked[f"blocks.{layer}.hook_mlp_out"], expected, atol=1e-5)
    block = model.model.layers[layer]
    by_hand = block.self_attn.v_proj(block.input_layernorm(clean[f"blocks.{layer}.hook_resid_pre"]))
    assert torch.allclose(captured[layer], by_hand, atol=1e-6)


def test_smoke_run_tables(tmp_store):
    from labpy import results

    entry = results("ffn_neurons", "smoke")["lab-lm"]
    gates, neurons, ablations = entry.table("gates"), entry.table("neurons"), entry.table("ablations")
    n_layers = entry.summary["n_layers"]
    assert len(gates) == 2 * n_layers
    assert gates[["open_share", "rarely_open", "mostly_open"]].stack().between(0, 1).all()
    assert set(neurons.role) == {"code neuron", "prose neuron", "random neuron"}
    for layer, rows in neurons.groupby("layer"):
        roles = rows.set_index("role").cohens_d
        assert roles["code neuron"] >= roles["random neuron"] >= roles["prose neuron"]   # argmax and argmin of d
    assert len(ablations) == len(neurons)
    scope = entry.table("neuroscope")
    assert scope.groupby(["layer", "role"]).activation.apply(lambda a: a.is_monotonic_decreasing).all()
    values = entry.table("values")
    assert (values.same_token_cos <= 1 + 1e-6).all()
    assert values[["values_accuracy", "majority"]].stack().between(0, 1).all()


def test_neuroscope_entries_are_the_neurons_largest_activations(tmp_store):
    """Each Neuroscope row's activation and token are read back from a fresh capture of the same windows: the top
    row is the neuron's largest activation over both kinds of text, at the token shown."""
    from labpy import results
    from labpy.tasks.source_code import prose_and_code_windows

    entry = results("ffn_neurons", "smoke")["lab-lm"]
    model, tokenizer = load_lm(entry.config.model)
    texts = prose_and_code_windows(tokenizer, entry.config.n_windows, entry.config.seq_len + 1)
    scope = entry.table("neuroscope")
    for (layer, neuron), rows in scope.groupby(["layer", "neuron"]):
        acts, tokens = [], []
        for kind in ("prose", "code"):
            inputs = texts[kind][:, :-1]
            with torch.no_grad():
                _, cache = run_with_cache(model, inputs, [f"blocks.{layer}.mlp.hook_post"])
            acts.append(cache[f"blocks.{layer}.mlp.hook_post"][:, 1:, neuron].reshape(-1))
            tokens.append(inputs[:, 1:].reshape(-1))
        act, ids = torch.cat(acts), torch.cat(tokens)
        top = rows.sort_values("rank").iloc[0]
        assert abs(top.activation - act.max().item()) < 1e-5
        assert top.token == tokenizer.decode([int(ids[act.argmax()])])
