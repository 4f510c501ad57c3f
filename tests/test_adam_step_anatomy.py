"""adam_step_anatomy: its factors against Adam's moments computed by hand for gradient sequences chosen to make each
factor known, and a smoke run that fills its tables; adam_short_memory: the same run with only β₂ changed."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from labpy.experiments.adam_step_anatomy import AdamAnatomyConfig, anatomy
from labpy.train import StatsContext


def _watched(gradients: list[torch.Tensor], betas=(0.9, 0.999)) -> list[dict]:
    """Feed `gradients` to AdamW one step at a time on a lone 'proj' matrix; the anatomy rows after each step."""
    model = nn.Module()
    model.layer = nn.Module()
    model.layer.o_proj = nn.Linear(3, 2, bias=False)
    p = model.layer.o_proj.weight
    names = {id(q): n for n, q in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, betas=betas, weight_decay=0.0, eps=1e-12)
    stats, rows = anatomy({}), []
    for t, g in enumerate(gradients, start=1):
        p.grad = g.clone()
        optimizer.step()
        rows += [r for r in stats(StatsContext(model, optimizer, t, 0.01, names)) if r["group"] == "matrices"]
    return rows


def test_a_gradient_that_flips_every_step_keeps_what_the_geometric_sum_says():
    G = torch.tensor([[0.5, -2.0, 1.0], [3.0, 0.1, -0.7]])
    beta1 = 0.9
    rows = _watched([G * (-1) ** t for t in range(1, 41)])
    for t, row in enumerate(rows, start=1):
        # m_t = (1 − β₁) Σ_k β₁^(t−k) s_k G with s_k = (−1)^k; v̂ = G² exactly, so fresh = 1
        c = sum((1 - beta1) * beta1 ** (t - k) * (-1) ** k for k in range(1, t + 1))
        assert row["carry"] == pytest.approx(abs(c) / (1 - beta1 ** t), rel=1e-5)
        assert row["write"] == pytest.approx(abs(c) / (1 - beta1 ** t), rel=1e-5)
        assert row["fresh"] == pytest.approx(1.0, rel=1e-5)
        if t > 1:
            assert row["lag_cosine"] == pytest.approx(-1.0) and row["sign_flips"] == 1.0
    assert rows[-1]["carry"] == pytest.approx((1 - beta1) / (1 + beta1), rel=1e-3)   # the limit: 0.1 / 1.9
    assert math.isnan(rows[0]["lag_cosine"])


def test_a_shrinking_steady_gradient_is_fresh_as_the_remembered_mean_says():
    G = torch.tensor([[1.0, -1.0, 2.0], [0.5, 0.25, -3.0]])
    beta2, r = 0.999, 0.9
    rows = _watched([G * r ** t for t in range(1, 31)])
    for t, row in enumerate(rows, start=1):
        v_hat = sum((1 - beta2) * beta2 ** (t - k) * r ** (2 * k) for k in range(1, t + 1)) / (1 - beta2 ** t)
        assert row["fresh"] == pytest.approx(r ** t / math.sqrt(v_hat), rel=1e-5)       # per entry: G² cancels
        if t > 1:
            assert row["lag_cosine"] == pytest.approx(1.0) and row["sign_flips"] == 0.0
    assert rows[-1]["fresh"] < 0.3                         # 0.9^30 against the mean of the larger early ones


def test_the_smoke_run_fills_a_row_per_step_and_seed_and_bad_windows_are_one_clear_error(tmp_store):
    from labpy import results
    from labpy.errors import ConfigError

    run = results("adam_step_anatomy", "smoke")["lr-0.1"]
    c = run.config
    table = run.table("anatomy")
    matrices = table[table.group == "matrices"]
    assert sorted(matrices.step.unique()) == list(range(c.window_start, c.window_end + 1))
    assert len(matrices) == len(c.seeds) * (c.window_end - c.window_start + 1)
    assert matrices[matrices.step == c.window_start].lag_cosine.isna().all()
    assert matrices[matrices.step > c.window_start].lag_cosine.between(-1, 1).all()
    assert set(run.table("seeds").seed) == set(c.seeds)
    with pytest.raises(ConfigError, match=r"AdamAnatomyConfig.window_end = 500 is out of range; it must be above "
                                          r"window_start = 39 and at most steps = 200"):
        AdamAnatomyConfig(window_end=500)


def test_the_short_memory_run_changes_only_adams_beta2_and_adds_the_heldout_loss(tmp_store, tmp_path):
    import dataclasses

    from labpy import results
    from labpy.errors import ConfigError
    from labpy.experiments.adam_short_memory import ShortMemoryConfig
    from labpy.experiments.adam_step_anatomy import watch
    from labpy.experiments.registry import RunContext

    short = results("adam_short_memory", "smoke")["beta2-0.95"]
    plain = results("adam_step_anatomy", "smoke")["lr-0.1"]
    assert short.summary["betas"] == [0.9, 0.95] and plain.summary["betas"] == [0.9, 0.999]
    assert short.table("seeds").final_val_loss.notna().all()
    table = short.table("anatomy")
    assert table.val_loss.notna().all()
    # the same config with the sweep's β₂ gives back adam_step_anatomy's tables, so β₂ is all that differs
    same = dataclasses.replace(short.config, beta2=0.999)
    again = watch(same, RunContext(work_dir=tmp_path, progress=False, label="check"), "check", heldout=True,
                  betas=(same.beta1, same.beta2))
    numbers = ["write", "carry", "fresh", "lag_cosine", "sign_flips"]
    mine, stored = again.tables["anatomy"].reset_index(drop=True), plain.table("anatomy")
    assert list(mine.step) == list(stored.step) and list(mine.group) == list(stored.group)
    assert np.allclose(mine[numbers], stored[numbers], rtol=1e-4, atol=1e-6, equal_nan=True)
    assert not np.allclose(table[numbers], stored[numbers], rtol=1e-4, atol=1e-6, equal_nan=True)
    with pytest.raises(ConfigError, match=r"ShortMemoryConfig.beta2 = 1.0 is out of range"):
        ShortMemoryConfig(beta2=1.0)
