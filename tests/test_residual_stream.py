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
