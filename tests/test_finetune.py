"""Fine-tuning dynamics (A3): the source-code corpus, the finetune helper, LoRA's ΔW, effective ranks, the
gradient noise scale, and smoke runs of the lora_rank, forgetting and batch_lr experiments."""

import copy
import hashlib
import math

import pytest
import torch

from labpy.experiments import (batch_lr, batch_lr_analysis, forgetting_analysis, lora_rank, lora_rank_analysis,
                               results)
from labpy.finetune import (FinetuneConfig, finetune, flatten_factors, lora_delta, lora_factors, make_trainable,
                            mixed_batch_fn, prepare_model, unflatten_factors)
from labpy.tasks import source_code
from labpy.tasks.corpus import lm_batch_fn
from labpy.train import TrainSpec


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory):
    """One writable temporary store for the module: the smoke lab LM trains once (seconds)."""
    from labpy.store import READONLY_ENV, RunStore
    from tests.conftest import ROOT

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
        mp.setenv("LAB_ROOT", str(ROOT))
        mp.setenv("LAB_TRAIN_MISSING", "1")
        mp.delenv(READONLY_ENV, raising=False)
        yield RunStore()


SMOKE = FinetuneConfig(base="lab-lm:smoke", rank=4, lr=5e-3, steps=12, batch_size=4, seq_len=32, warmup_steps=0,
                       eval_every=6, eval_windows=8, source_chars=60_000)


# ---- the corpus ----

def test_source_corpus_is_deterministic_and_splits_whole_files():
    train, heldout = source_code.source_corpus("train"), source_code.source_corpus("heldout", 100_000)
    assert source_code.source_corpus("train") == train                       # same files, same text
    assert set(train.files).isdisjoint(heldout.files) and train.files and heldout.files
    assert len(train.text) <= 400_000 and len(heldout.text) <= 100_000
    for name in train.files[:5] + heldout.files[:5]:                          # the split is a hash of the name
        bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 16**8
        assert (name in heldout.files) == (bucket < 0.2)
    with_docs = source_code.source_corpus("train", max_chars=10**8, docstrings=True)
    without = source_code.source_corpus("train", max_chars=10**8)
    assert with_docs.files == without.files and len(with_docs.text) > 1.1 * len(without.text)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        source_code.source_corpus("test")


def test_strip_docstrings_keeps_code_and_comments():
    source = 'def f(x):\n    """Doc\n    more."""\n    # a comment\n    return x\n\nclass C:\n    "one line"\n    y = 1\n'
    stripped = source_code.strip_docstrings(source)
    assert "Doc" not in stripped and "one line" not in stripped
    assert "# a comment" in stripped and "return x" in stripped and "y = 1" in stripped
    compile(stripped, "<stripped>", "exec")                                   # still valid Python
    ns: dict = {}
    exec(stripped, ns)
    assert ns["f"](3) == 3 and ns["f"].__doc__ is None


def test_spaced_windows_are_disjoint_slices_spread_over_the_stream():
    ids = torch.arange(1000)
    w = source_code.spaced_windows(ids, 5, 9)                                 # (5, 10)
    assert w.shape == (5, 10) and w[0, 0] == 0 and w[-1, -1] == 999
    starts = w[:, 0].tolist()
    assert all(b - a >= 10 for a, b in zip(starts, starts[1:]))               # non-overlapping
    assert torch.equal(w, ids[w[:, :1] + torch.arange(10)])                   # contiguous slices


def test_replay_swaps_the_last_rows_for_the_replay_stream():
    new = lm_batch_fn(torch.arange(0, 500), 4, 8, seed=0)
    old = lm_batch_fn(torch.arange(1000, 1500), 4, 8, seed=1)
    batch = mixed_batch_fn(new, old, 1)(3)
    assert batch.shape == (4, 9) and (batch[:3] < 500).all() and (batch[3] >= 1000).all()
    assert torch.equal(batch[:3], new(3)[:3])


# ---- the finetune helper ----

def test_full_finetune_lowers_new_domain_loss(smoke_store):
    model, tokenizer = prepare_model(dataclasses_replace(SMOKE, rank=0))
    data = source_code.finetune_data(tokenizer, SMOKE.seq_len, SMOKE.eval_windows, SMOKE.source_chars)
    log = finetune(model, lm_batch_fn(data.source_train, 4, SMOKE.seq_len, 0),
                   TrainSpec(steps=12, lr=3e-3, eval_every=6), data.eval_sets)
    assert list(log.evals.step) == [0, 6, 12] and {"loss_source", "loss_pydoc"} <= set(log.evals.columns)
    assert log.evals.loss_source.iloc[-1] < log.evals.loss_source.iloc[0] - 0.1     # held-out source text


def test_lora_changes_only_adapters_and_fits_a_batch(smoke_store):
    """The smoke LM has learned little to build on, so LoRA is checked on one repeated batch it must fit."""
    model, tokenizer = prepare_model(SMOKE)
    batch = source_code.finetune_data(tokenizer, SMOKE.seq_len, SMOKE.eval_windows, SMOKE.source_chars
                                      ).eval_sets["source"]                              # (8, T+1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = finetune(model, lambda step: batch, TrainSpec(steps=12, lr=1e-2, eval_every=12), {"fit": batch})
    assert log.evals.loss_fit.iloc[-1] < log.evals.loss_fit.iloc[0] - 0.02
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_A" in k for k in changed) and any("lora_B" in k for k in changed)


def test_lora_delta_equals_merged_minus_base(smoke_store):
    """ΔW = B·A·(α/r) against peft's own merge_and_unload (with α ≠ r so the scale matters)."""
    base, _ = prepare_model(dataclasses_replace(SMOKE, rank=0))
    base.requires_grad_(False)
    model = make_trainable(copy.deepcopy(base), rank=4, alpha=10.0, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)                                             # B starts at zero: make it count
    factors = lora_factors(model)
    assert all(float(f["scale"]) == 2.5 for f in factors.values())
    merged = copy.deepcopy(model).merge_and_unload()
    for name, f in factors.items():
        w_base = base.get_submodule(name).weight
        w_merged = merged.get_submodule(name).weight
        torch.testing.assert_close(lora_delta(f), w_merged - w_base, atol=1e-6, rtol=1e-5)
    # the store's flat form round-trips
    back = unflatten_factors(flatten_factors(factors))
    assert back.keys() == factors.keys() and all(torch.equal(back[n]["A"], factors[n]["A"]) for n in factors)


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_full_finetune_unfreezes_everything_and_bad_inputs_are_named(smoke_store):
    model, _ = prepare_model(dataclasses_replace(SMOKE, rank=0))
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="rank must be >= 0"):
        make_trainable(model, rank=-1)
    with pytest.raises(ValueError, match="at least one eval set"):
        finetune(model, lambda s: None, TrainSpec(steps=1, lr=1e-3), {})
    with pytest.raises(ValueError, match=r"must be \(N, T\+1\)"):
        finetune(model, lambda s: None, TrainSpec(steps=1, lr=1e-3), {"x": torch.zeros(5, dtype=torch.long)})


# ---- spectra ----

def _matrix_with_singular_values(s: list[float], rows: int = 24, cols: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, len(s), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T


def test_effective_rank_of_matrices_with_known_rank():
    for k in (1, 3, 7):
        s = lora_rank.singular_values(_matrix_with_singular_values([2.0] * k))
        assert lora_rank.effective_rank(s) == pytest.approx(k, rel=1e-6)      # k equal values: exactly k
        assert lora_rank.energy_rank(s, 0.9) == math.ceil(0.9 * k - 1e-9)
    s = lora_rank.singular_values(_matrix_with_singular_values([4.0, 3.0]))
    torch.testing.assert_close(s[:2], torch.tensor([4.0, 3.0], dtype=torch.float64))
    p = torch.tensor([4 / 7, 3 / 7])
    assert lora_rank.effective_rank(s) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)
    assert lora_rank.energy_rank(s, 0.6) == 1 and lora_rank.energy_rank(s, 0.9) == 2   # 16/25 = 0.64 in the first
    # a LoRA product B·A has rank <= r
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(32, 3, generator=g) @ torch.randn(3, 20, generator=g)
    assert lora_rank.energy_rank(lora_rank.singular_values(delta), 0.999999) <= 3


# ---- the gradient noise scale ----

def test_noise_scale_by_hand_on_three_examples():
    grads = torch.tensor([[1.0, 0.0], [3.0, 2.0], [2.0, 4.0]])
    # mean (2, 2); deviations (-1,-2), (1,0), (0,2): sum of squares 5 + 1 + 4 = 10, /(n-1) = 5
    out = batch_lr.noise_scale_from_samples(grads)
    assert out["trace_sigma"] == pytest.approx(5.0)
    assert out["g2"] == pytest.approx(8.0 - 5.0 / 3)
    assert out["b_simple"] == pytest.approx(5.0 / (8.0 - 5.0 / 3))


def test_noise_scale_recovers_known_sigma_and_gradient():
    """Per-example gradients g = G + L z with known G and Σ = L Lᵀ: B_simple = tr(Σ)/|G|²."""
    gen = torch.Generator().manual_seed(0)
    p = 6
    G = torch.tensor([0.5, -0.3, 0.2, 0.0, 0.1, 0.4], dtype=torch.float64)
    L = torch.randn(p, p, generator=gen, dtype=torch.float64) * 0.5
    sigma_trace, g2 = float((L @ L.T).trace()), float(G @ G)
    grads = G + torch.randn(40_000, p, generator=gen, dtype=torch.float64) @ L.T
    out = batch_lr.noise_scale_from_samples(grads)
    assert out["trace_sigma"] == pytest.approx(sigma_trace, rel=0.03)
    assert out["g2"] == pytest.approx(g2, rel=0.05)
    assert out["b_simple"] == pytest.approx(sigma_trace / g2, rel=0.06)
    # the two-batch estimator on the exact expectations E|G_B|² = |G|² + tr(Σ)/B recovers both exactly
    two = batch_lr.noise_scale_from_batches(4, g2 + sigma_trace / 4, 64, g2 + sigma_trace / 64)
    assert two["g2"] == pytest.approx(g2) and two["trace_sigma"] == pytest.approx(sigma_trace)
    # and on sampled batches it agrees with the per-example estimate
    sampled = batch_lr.noise_scale_from_batches(1, batch_lr.mean_batch_grad_sq(grads, 1), 100,
                                                batch_lr.mean_batch_grad_sq(grads, 100))
    assert sampled["b_simple"] == pytest.approx(sigma_trace / g2, rel=0.15)


def test_jackknife_error_matches_explicit_leave_one_out():
    grads = torch.randn(30, 5, generator=torch.Generator().manual_seed(2)) + 0.4
    loo = torch.tensor([batch_lr.noise_scale_from_samples(torch.cat([grads[:i], grads[i + 1:]]))["b_simple"]
                        for i in range(30)], dtype=torch.float64)
    expected = math.sqrt(29 / 30 * float(((loo - loo.mean()) ** 2).sum()))
    assert batch_lr.jackknife_b_simple(grads) == pytest.approx(expected, rel=1e-9)


def test_per_example_grads_average_to_the_batch_gradient(smoke_store):
    model, tokenizer = prepare_model(SMOKE)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    windows = source_code.finetune_data(tokenizer, 16, 4, 60_000).eval_sets["source"]   # (4, 17)
    per = batch_lr.per_example_grads(model, windows)                                   # (4, P)
    from labpy.models.lab_lm import lm_loss

    params = [p for p in model.parameters() if p.requires_grad]
    whole = torch.cat([g.flatten() for g in torch.autograd.grad(lm_loss(model, windows), params)])
    torch.testing.assert_close(per.mean(0), whole, atol=1e-6, rtol=1e-4)


# ---- smoke runs of the experiments ----

def test_lora_rank_smoke(smoke_store):
    runs = results("lora_rank", scale="smoke")
    assert set(runs.entries) == {"r1_lr0.003", "r4_lr0.003", "full_lr0.001"}
    spec = lora_rank_analysis.spectra(runs)
    table = lora_rank_analysis.rank_table(spec)
    assert (table[table["rank"] == 1].energy_rank_90 == 1).all()
    assert (table[table["rank"] == 4].energy_rank_90 <= 4).all()
    # the fp16 store reproduces the fp32 effective ranks computed at run time
    for label, entry in runs.entries.items():
        live = table[table.run == label].set_index("module").effective_rank
        stored = entry.table("ranks_fp32").set_index("module").effective_rank
        assert (live.reindex(stored.index) - stored).abs().max() < 0.05 * stored.max()
    quality = lora_rank_analysis.quality_table(runs)
    assert quality.set_index("run").trainable_params["r4_lr0.003"] == 4 * quality.set_index("run").trainable_params["r1_lr0.003"]


def test_forgetting_smoke(smoke_store):
    runs = results("forgetting", scale="smoke")
    table = forgetting_analysis.tradeoff_table(runs)
    assert len(table) == 4 and table.forgetting.notna().all()
    assert set(table.family) == {"LoRA r8", "full fine-tuning", "LoRA r8 + replay", "LoRA r8, long"}
    curves = forgetting_analysis.curves(runs)
    assert (curves[curves.step == 0].change == 0).all()


def test_batch_lr_smoke(smoke_store):
    runs = results("batch_lr", scale="smoke")
    grid = batch_lr_analysis.grid_table(runs)
    assert len(grid) == 4 and set(grid.batch_size) == {4, 8}
    assert grid.groupby("batch_size").steps.first().to_dict() == {4: 8, 8: 4}      # equal examples seen
    best = batch_lr_analysis.best_lrs(grid)
    assert len(best) == 2
    noise = runs["noise"].table("noise")
    assert list(noise.step) == [0, 4] and (noise.trace_sigma > 0).all()


def test_fitted_best_lr_finds_the_vertex_between_grid_points_and_the_slope():
    import pandas as pd

    rows = []
    for batch, optimum in ((4, 3e-3), (16, 6e-3)):                       # optimum grows as sqrt(batch)
        for lr in (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2):
            rows.append({"batch_size": batch, "lr": lr, "seed": 0, "diverged": False,
                         "final_source": (math.log(lr) - math.log(optimum)) ** 2})
    fitted = batch_lr_analysis.fitted_best_lr(pd.DataFrame(rows))
    assert fitted.best_lr.tolist() == pytest.approx([3e-3, 6e-3], rel=1e-6)
    assert batch_lr_analysis.scaling_exponent(fitted) == pytest.approx(0.5, rel=1e-6)
    grid_best = batch_lr_analysis.best_lrs(pd.DataFrame(rows))
    assert grid_best.best_lr.tolist() == [4e-3, 8e-3]                    # the grid points nearest the optima


def test_subspace_overlap_known_cases():
    a = _matrix_with_singular_values([3.0, 2.0, 1.0], rows=24, cols=16, seed=0)
    assert lora_rank_analysis.subspace_overlap(a, 5 * a, 3) == pytest.approx(1.0)
    u = torch.linalg.svd(a, full_matrices=False).U[:, :3]
    q, _ = torch.linalg.qr(torch.cat([u, torch.randn(24, 3, dtype=torch.float64)], 1))
    orth = q[:, 3:] @ torch.randn(3, 16, dtype=torch.float64)               # columns orthogonal to a's
    assert lora_rank_analysis.subspace_overlap(a, orth, 3) == pytest.approx(0.0, abs=1e-12)
    g = torch.Generator().manual_seed(3)
    randoms = [lora_rank_analysis.subspace_overlap(torch.randn(64, 64, generator=g),
                                                   torch.randn(64, 64, generator=g), 4)
               for _ in range(50)]
    assert sum(randoms) / 50 == pytest.approx(4 / 64, rel=0.3)


def test_examples_to_reach_interpolates_and_mccandlish_ratio():
    import pandas as pd

    curve = pd.DataFrame({"step": [0, 10, 20], "loss_source": [5.0, 4.0, 3.0]})
    assert batch_lr_analysis.examples_to_reach(curve, 4, 3.5) == pytest.approx(15 * 4)
    assert math.isnan(batch_lr_analysis.examples_to_reach(curve, 4, 2.0))
    assert batch_lr_analysis.mccandlish_examples_ratio(4, 32, 28) == pytest.approx((1 + 32 / 28) / (1 + 4 / 28))
    assert batch_lr_analysis.mccandlish_examples_ratio(4, 32, 1e12) == pytest.approx(1.0)     # far below B_noise: free
