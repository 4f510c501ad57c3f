"""quant_first_token_heads: the per-head hook against restoring a key/value head's value, the cosine and direct-logit
helpers against hand computations, and the stored smoke run's shape and error message."""

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity

from labpy.experiments.massive_neuron import direct_logits
from labpy.experiments.quant_first_token_heads import FirstTokenHeadsConfig, add_back, mean_pairwise_cosine, run
from labpy.experiments.registry import RunContext
from labpy.interp.hf_hooks import heads, hooks, kv_head_of, run_with_cache
from labpy.models.lm import load_lm


def _perturb_position_0(v_proj, noise: torch.Tensor, keep: slice | None = None):
    """Add `noise` (B, KV·h) to v_proj's output at position 0, except in the columns `keep`."""
    def hook(mod, inputs, output):
        output = output.clone()
        added = noise.clone()
        if keep is not None:
            added[:, keep] = 0
        output[:, 0] += added
        return output
    return v_proj.register_forward_hook(hook)


def test_a_groups_query_heads_together_restore_its_key_value_head(tmp_store):
    """Perturb layer 1's first-token values; adding a(t,0)·(−noise) back to every query head of group g must equal
    a run where group g's values were never perturbed — computed the other way, by leaving its columns alone."""
    model, _ = load_lm("lab-lm:smoke")
    model.eval()
    n_heads, n_kv, head_dim = heads(model)
    kv_of = kv_head_of(model)
    v_proj = model.model.layers[1].self_attn.v_proj
    tokens = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, n_kv * head_dim, generator=torch.Generator().manual_seed(1))
    handle = _perturb_position_0(v_proj, noise)
    try:
        perturbed, cache = run_with_cache(model, tokens, "blocks.1.attn.hook_pattern")
        pattern = cache["blocks.1.attn.hook_pattern"]
        for g in range(n_kv):
            fixes = [add_back(1, pattern, -noise.unflatten(-1, (n_kv, head_dim)), h, g)
                     for h in range(n_heads) if kv_of[h] == g]
            with torch.no_grad(), hooks(model, fixes):
                restored = model(tokens).logits
            handle.remove()
            handle = _perturb_position_0(v_proj, noise, keep=slice(g * head_dim, (g + 1) * head_dim))
            with torch.no_grad():
                never_perturbed = model(tokens).logits
            handle.remove()
            handle = _perturb_position_0(v_proj, noise)
            assert torch.allclose(restored, never_perturbed, atol=1e-5)
            assert not torch.allclose(restored, perturbed, atol=1e-3)
    finally:
        handle.remove()


def test_mean_pairwise_cosine_matches_sklearn():
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(2))
    sims = cosine_similarity(x.double().numpy())
    assert mean_pairwise_cosine(x) == pytest.approx(sims[~np.eye(6, dtype=bool)].mean(), rel=1e-9)
    assert mean_pairwise_cosine(torch.ones(3, 4) * torch.tensor([[1.0], [2.0], [5.0]])) == pytest.approx(1.0)


def test_direct_logits_is_the_unembedding_of_the_normed_write(tmp_store):
    """Against the model's own final norm and head: for a stream s and a write w orthogonal to it (so the norm's
    size barely changes), logits(s + εw) − logits(s) ≈ ε·direct_logits(w) / RMS(s) when ε is small."""
    model, _ = load_lm("lab-lm:smoke")
    s = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    w = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(4))
    w = w - (w @ s) / (s @ s) * s
    eps = 1e-3
    with torch.no_grad():
        logits = lambda x: model.lm_head(model.model.norm(x[None]))[0]                   # noqa: E731
        change = (logits(s + eps * w) - logits(s)) / eps
        rms = s.pow(2).mean().add(model.config.rms_norm_eps).sqrt()
        assert torch.allclose(change, direct_logits(model, w) / rms, atol=1e-3 * float(change.abs().max()))


def test_smoke_run_holds_every_head_and_says_which_layers_are_allowed(tmp_store, tmp_path):
    from labpy import results

    entry = results("quant_first_token_heads", "smoke")["lab-lm"]
    s = entry.summary
    restores = entry.table("restores")
    later = s["n_layers"] - 1 - s["block"]
    for kind, g in restores.groupby("kind"):
        assert (g.unit == "key/value head").sum() == later * s["n_kv_heads"]
        assert (g.unit == "query head").sum() == len(entry.config.layers) * s["n_heads"]
    shares = entry.table("heads").sink_share
    assert shares.between(0, 1).all()
    assert set(entry.table("tokens").direction) == {"raised", "lowered"}
    with pytest.raises(ValueError, match=r"layers=\[0\]"):
        run(FirstTokenHeadsConfig(model="lab-lm:smoke", block=0, layers=(0,), n_windows=2, seq_len=16),
            RunContext(work_dir=tmp_path / "w"))
