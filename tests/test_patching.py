"""Activation and attribution patching (`labpy.interp.patching`) against independent references: the full
model's forward pass, TransformerLens-named hooks (`hf_hooks`), finite differences, and exact identities of
patching (a patch of every differing position is the other run; a patch where the runs agree changes nothing)."""

import pytest
import torch

from labpy.errors import LabError
from labpy.interp import patching as P
from labpy.interp.hf_hooks import run_with_hooks
from labpy.tasks.ioi import ioi_pairs


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """The smoke-scale lab LM (Qwen2, q/k/v biases, grouped-query heads), trained into a throwaway store."""
    from labpy.store import READONLY_ENV

    mp = pytest.MonkeyPatch()
    mp.setenv("LAB_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
    mp.delenv(READONLY_ENV, raising=False)
    mp.setenv("LAB_TRAIN_MISSING", "1")
    from labpy.models.lm import load_lm

    model, tokenizer = load_lm("lab-lm:smoke")
    yield model, tokenizer, ioi_pairs(tokenizer, words="python words", n_pairs=2)
    mp.undo()


def test_pairs_differ_in_one_token_and_swap_the_answer(lm):
    _, tokenizer, pairs = lm
    differ = (pairs.clean != pairs.corrupted)
    assert differ.sum(1).tolist() == [1] * len(pairs.clean) and differ[:, pairs.s2_position].all()
    # clean S2 repeats the subject (S1); corrupted S2 repeats the indirect object: the answer flips
    assert (pairs.clean[:, pairs.s2_position] == pairs.clean[:, pairs.s1_position]).all()
    assert (pairs.corrupted[:, pairs.s2_position] == pairs.clean[:, pairs.io_position]).all()
    assert (pairs.io == pairs.clean[:, pairs.io_position]).all() and (pairs.s == pairs.clean[:, pairs.s1_position]).all()
    assert pairs.position_labels[pairs.s2_position] == " [S2]" and len(pairs.position_labels) == pairs.clean.shape[1]


def test_too_many_pairs_is_one_clear_error(lm):
    _, tokenizer, _ = lm
    with pytest.raises(LabError, match=r"n_pairs=99: .* single-token python words.*ask for fewer"):
        ioi_pairs(tokenizer, words="python words", n_pairs=99)
    with pytest.raises(LabError, match="unknown template 'zoo'"):
        ioi_pairs(tokenizer, template="zoo")
    with pytest.raises(LabError, match="unknown words 'planets'"):
        ioi_pairs(tokenizer, words="planets")


def test_running_from_any_layer_reproduces_the_full_forward_pass(lm):
    model, _, pairs = lm
    streams, last = P.residual_streams(model, pairs.clean)
    with torch.no_grad():
        full = model(pairs.clean).logits[:, -1]                                    # (B, V) plain HF
    assert torch.allclose(last, full, atol=1e-5)
    for layer in range(len(streams)):
        assert torch.allclose(P.last_logits_from(model, streams[layer], layer), full, atol=1e-5), layer
    assert len(model.model.layers) == model.config.num_hidden_layers   # from_layer put every block back


def test_residual_patches_are_exact_where_the_answer_is_known(lm):
    model, _, pairs = lm
    clean, clean_logits = P.residual_streams(model, pairs.clean)
    corrupt, corrupt_logits = P.residual_streams(model, pairs.corrupted)
    # the embedding at the one differing position *is* the whole difference: patching it gives the clean run
    assert torch.allclose(P.patch_residual(model, corrupt, clean, 0, pairs.s2_position), clean_logits, atol=1e-5)
    # the final stream at the last position is all the logits read
    assert torch.allclose(P.patch_residual(model, corrupt, clean, len(clean) - 1, -1), clean_logits, atol=1e-5)
    # before the change the runs agree (causal model): a patch there is a no-op
    assert torch.equal(clean[:, :, :pairs.s2_position], corrupt[:, :, :pairs.s2_position])
    assert torch.allclose(P.patch_residual(model, corrupt, clean, 1, 0), corrupt_logits, atol=1e-5)


def test_a_head_patch_matches_the_same_patch_through_named_hooks(lm):
    model, _, pairs = lm
    corrupt, _ = P.residual_streams(model, pairs.corrupted)
    z_clean = P.head_outputs(model, pairs.clean)                                  # (L, B, T, H, h)
    layer, head = 1, 2

    def swap(z, hook):
        z = z.clone()
        z[:, :, head] = z_clean[layer][:, :, head]
        return z

    reference = run_with_hooks(model, pairs.corrupted, [(f"blocks.{layer}.attn.hook_z", swap)])[:, -1]
    assert torch.allclose(P.patch_head(model, corrupt, z_clean[layer], layer, head), reference, atol=1e-5)


def test_attribution_gradients_match_finite_differences(lm):
    model, _, pairs = lm
    streams, logits = P.residual_streams(model, pairs.corrupted)
    g_stream, g_z, metric = P.gradients(model, pairs.corrupted, pairs.io, pairs.s)
    assert torch.allclose(metric, P.logit_diff(logits, pairs.io, pairs.s), atol=1e-5)
    assert g_stream.shape == streams.shape
    layer = 1
    direction = torch.randn(streams[layer].shape, generator=torch.Generator().manual_seed(0))
    eps = 1e-2

    def metric_at(x):
        return P.logit_diff(P.last_logits_from(model, x, layer), pairs.io, pairs.s).double()

    finite = (metric_at(streams[layer] + eps * direction) - metric_at(streams[layer] - eps * direction)) / (2 * eps)
    analytic = (g_stream[layer] * direction).sum((-1, -2))                          # (B,) one per prompt
    assert torch.allclose(finite.float(), analytic, rtol=2e-2, atol=2e-3)
    # gradients w.r.t. z: the same check at one head's output, through the hooked o_proj
    z = P.head_outputs(model, pairs.corrupted)
    dz = torch.zeros_like(z[layer]).normal_(generator=torch.Generator().manual_seed(1))

    def metric_z(step):
        return P.logit_diff(P.patch_head(model, streams, z[layer] + step * dz, layer, 0), pairs.io, pairs.s).double()

    finite_z = (metric_z(eps) - metric_z(-eps)) / (2 * eps)
    assert torch.allclose(finite_z.float(), (g_z[layer][:, :, 0] * dz[:, :, 0]).sum((-1, -2)), rtol=2e-2, atol=2e-3)


def test_the_experiment_stores_exact_endpoints(tmp_store):
    from labpy import results

    entry = results("activation_patching", "smoke")["lab-lm"]
    resid = entry.table("residual")
    s2, last_point = entry.summary["s2_position"], resid.layer.max()
    skipped = resid[~resid.rerun]
    assert set(skipped.position) == set(range(s2)) and (skipped[["denoising", "noising"]] == 0).all().all()
    at_s2 = resid[(resid.layer == 0) & (resid.position == s2)].iloc[0]
    end = resid[(resid.layer == last_point) & (resid.position == resid.position.max())].iloc[0]
    for row in (at_s2, end):      # patching the whole difference restores (or destroys) all of it
        assert row.denoising == pytest.approx(1, abs=1e-2) and row.noising == pytest.approx(1, abs=1e-2)
    heads = entry.table("heads")
    assert len(heads) == entry.summary["n_layers"] * entry.summary["n_heads"]
    ablation = entry.table("ablation")
    assert (ablation[ablation.set == "top heads"].k.diff().dropna() == 1).all()


def test_attribution_estimates_a_small_patch_at_each_point(lm):
    """`attribution`'s reduction (sum over width, mean over prompts) and sign, against real patches of sources a
    small random step either side of the target (the central difference cancels the second-order term)."""
    model, _, pairs = lm
    corrupt, logits = P.residual_streams(model, pairs.corrupted)
    z = P.head_outputs(model, pairs.corrupted)                                       # (L, B, T, H, h)
    g_stream, g_z, _ = P.gradients(model, pairs.corrupted, pairs.io, pairs.s)
    gen = torch.Generator().manual_seed(3)
    layer, pos, head, eps = 1, pairs.s2_position, 1, 1e-2
    step = eps * torch.randn(corrupt.shape, generator=gen)
    estimate = P.attribution(g_stream, corrupt, corrupt + step, 1.0, (-1,), 1)      # (L+1, T), in logits

    def resid_metric(source):
        return P.logit_diff(P.patch_residual(model, corrupt, source, layer, pos), pairs.io, pairs.s).double().mean()

    central = (resid_metric(corrupt + step) - resid_metric(corrupt - step)) / 2
    assert central.item() == pytest.approx(estimate[layer, pos].item(), rel=0.03)
    z_step = eps * torch.randn(z.shape, generator=gen)
    head_estimate = P.attribution(g_z, z, z + z_step, 1.0, (2, 4), 1)               # (L, H)

    def head_metric(source):
        return P.logit_diff(P.patch_head(model, corrupt, source[layer], layer, head), pairs.io, pairs.s).double().mean()

    central_head = (head_metric(z + z_step) - head_metric(z - z_step)) / 2
    assert central_head.item() == pytest.approx(head_estimate[layer, head].item(), rel=0.03)
