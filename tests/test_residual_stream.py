"""The residual-stream experiment's decomposition is exact, and its logit lens ends where the model does."""

import pytest


def test_writes_sum_to_the_final_logit_and_the_lens_ends_at_the_output(tmp_store):
    from labpy import results

    entry = results("residual_stream", "smoke")["lab-lm"]
    layers = entry.table("layers")
    for kind, mine in layers.groupby("kind"):
        blocks = mine[mine.component == "block"]
        parts = mine[mine.component == "embedding"].dla.iloc[0] + blocks.attn_dla.sum() + blocks.mlp_dla.sum()
        final = mine[mine.component == "final logit (centred)"].dla.iloc[0]
        assert parts == pytest.approx(final, abs=1e-4), f"{kind}: direct attributions do not add up"
        last = blocks.iloc[-1]
        assert last.lens_kl == pytest.approx(0, abs=1e-5) and last.lens_top1 == 1.0   # the lens at the end is the model
        assert (blocks.lens_kl >= -1e-6).all() and blocks.lens_top1.between(0, 1).all()
        assert len(blocks) == entry.summary["n_layers"]


def test_stream_variance_and_top_direction_match_sklearn_pca(tmp_store):
    """The spread columns against numpy and scikit-learn's PCA on the same captured stream."""
    import numpy as np
    import torch
    from sklearn.decomposition import PCA

    from labpy import results
    from labpy.experiments.residual_stream import windows
    from labpy.interp.hf_hooks import run_with_cache
    from labpy.models.lm import load_lm

    entry = results("residual_stream", "smoke")["lab-lm"]
    model, tokenizer = load_lm(entry.config.model)
    tokens = windows(tokenizer, entry.config)["prose"]
    last = entry.summary["n_layers"] - 1
    with torch.no_grad():
        _, cache = run_with_cache(model, tokens[:, :-1], [f"blocks.{last}.hook_resid_post"])
    stream = cache[f"blocks.{last}.hook_resid_post"][:, 1:].reshape(-1, model.config.hidden_size).double().numpy()
    row = entry.table("layers").query("kind == 'prose' and component == 'block' and layer == @last").iloc[0]
    assert row.resid_var == pytest.approx(stream.var(0, ddof=1).mean(), rel=1e-5)
    assert row.resid_top_pc_share == pytest.approx(PCA().fit(stream).explained_variance_ratio_[0], rel=1e-5)
