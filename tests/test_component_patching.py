"""Component patching against a hand computation: patching the last block's MLP write at the last position is
the corrupted final stream with that one write swapped, read through the final norm and the unembedding."""

import torch

from labpy.experiments.component_patching import last_logit_diff, patch_at
from labpy.interp.hf_hooks import run_with_cache
from labpy.interp.patching import logit_diff
from labpy.models.lm import load_lm
from labpy.tasks.ioi import ioi_pairs


def test_last_mlp_patch_matches_the_hand_computation(tmp_store):
    model, tokenizer = load_lm("lab-lm:smoke")
    pairs = ioi_pairs(tokenizer, "store", "python words", 2)
    last = model.config.num_hidden_layers - 1
    names = [f"blocks.{last}.hook_mlp_out", f"blocks.{last}.hook_resid_post"]
    with torch.no_grad():
        _, clean = run_with_cache(model, pairs.clean, names)
        _, corrupt = run_with_cache(model, pairs.corrupted, names)
        name = f"blocks.{last}.hook_mlp_out"
        patched = last_logit_diff(model, pairs.corrupted, pairs, [(name, patch_at(clean[name], -1))])
        stream = corrupt[f"blocks.{last}.hook_resid_post"][:, -1] - corrupt[name][:, -1] + clean[name][:, -1]
        by_hand = logit_diff(model.lm_head(model.model.norm(stream)), pairs.io, pairs.s)
    assert torch.allclose(patched, by_hand, atol=1e-4)


def test_smoke_run_patches_only_where_the_runs_differ(tmp_store):
    from labpy import results

    entry = results("component_patching", "smoke")["lab-lm"]
    table = entry.table("components")
    s2 = entry.summary["s2_position"]
    assert len(table) == entry.summary["n_layers"] * 2 * entry.summary["n_positions"]
    before = table[table.position < s2]
    assert not before.rerun.any() and (before[["denoising", "noising"]] == 0).all().all()
    assert table[table.position >= s2].rerun.all()
