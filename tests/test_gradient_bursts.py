"""gradient_bursts: Adam's memory replayed from gradient norms against torch's AdamW state and a hand computation,
batch features by hand, and a smoke run whose replayed fresh factor matches adam_step_anatomy's measured one."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from labpy.experiments.gradient_bursts import (batch_features, burst_sizes, gradient_series, longest_run,
                                               replay_fresh, rolling_median, tensor_name)
from labpy.train import adam_moments


def test_replay_fresh_follows_torchs_adam_moments():
    """mean(v̂) over a matrix's entries, as AdamW keeps it, is the moving average of RMS(g)² that replay_fresh uses."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(4, 5))
    optimizer = torch.optim.AdamW([p], lr=0.01, betas=(0.9, 0.95), weight_decay=0.0)
    scales = [1.0, 0.2, 0.2, 5.0, 0.1, 0.1, 0.3, 2.0]          # a falling gradient with bursts
    rms, fresh_torch = [], []
    for s in scales:
        p.grad = s * torch.randn(4, 5)
        optimizer.step()
        _, v_hat = adam_moments(optimizer, p)
        g_rms = float(p.grad.pow(2).mean().sqrt())
        rms.append(g_rms)
        fresh_torch.append(g_rms / math.sqrt(float(v_hat.mean())))
    assert np.allclose(replay_fresh(pd.Series(rms), 0.95), fresh_torch, rtol=1e-5)


def test_replay_fresh_by_hand():
    assert np.allclose(replay_fresh(pd.Series([2.0] * 5), 0.9), 1.0)     # a steady gradient: fresh 1 from step 1
    # [1, 3] at β₂ = 0.5: v̂₂ = (0.5·0.5·1 + 0.5·9) / (1 − 0.25) = 19/3, fresh = 3 / √(19/3)
    assert np.allclose(replay_fresh(pd.Series([1.0, 3.0]), 0.5), [1.0, 3 / math.sqrt(19 / 3)])


def test_bursts_against_the_rolling_median():
    g2 = pd.Series([1.0, 1.0, 1.0, 16.0, 1.0, 1.0, 1.0])
    assert rolling_median(g2, 5).tolist() == [1.0] * 7
    rows = pd.DataFrame({"seed": 0, "step": range(1, 8), "tensor": "0.o_proj", "group": "matrices",
                         "g_rms": np.sqrt(g2)})
    sizes = burst_sizes(pd.concat([rows, rows.assign(tensor="embedding", group="embedding", g_rms=100.0)]))
    assert sizes.burst.tolist() == [1.0, 1.0, 1.0, 16.0, 1.0, 1.0, 1.0]   # the embedding is not a matrix


def test_batch_features_by_hand():
    unigram = torch.full((4,), 0.25)
    kinds = ["word start", "whitespace", "punctuation", "word start"]
    batch = torch.tensor([[0, 0, 0, 1, 2], [3, 1, 1, 1, 1]])                      # targets [0 0 1 2], [1 1 1 1]
    features, per_window = batch_features(batch, unigram, kinds)
    whole = torch.tensor([2, 5, 1, 0]) / 8
    assert features["distance"] == pytest.approx(float((whole - unigram).norm()))
    assert features["top_token_id"] == 1 and features["top_share"] == pytest.approx(5 / 8)
    assert features["whitespace_share"] == pytest.approx(5 / 8) and features["punctuation_share"] == pytest.approx(1 / 8)
    assert features["unigram_surprisal"] == pytest.approx(math.log(4))
    assert features["longest_run"] == 4
    assert per_window.tolist() == pytest.approx([math.sqrt(0.0625 + 0 + 0 + 0.0625), math.sqrt(3 * 0.0625 + 0.5625)])


def test_longest_run_and_names():
    assert longest_run(torch.tensor([5])) == 1
    assert longest_run(torch.tensor([1, 2, 2, 2, 3, 3])) == 3
    assert tensor_name("model.layers.1.mlp.down_proj.weight") == "1.down_proj"
    assert tensor_name("model.embed_tokens.weight") == "embedding"


def test_smoke_run_records_every_step_and_replays_the_measured_fresh_factor(tmp_store):
    from labpy import results

    run = results("gradient_bursts", "smoke")["lr-0.1"]
    c = run.config
    gradients, steps, texts = gradient_series(run), run.table("steps"), run.table("bursts")
    matrices = gradients[gradients.group == "matrices"].copy()
    assert len(matrices) == len(c.seeds) * c.steps * matrices.tensor.nunique() == len(c.seeds) * c.steps * 7 * c.n_layers
    assert sorted(steps.step.unique()) == list(range(1, c.steps + 1))
    # the windows' losses are the batch's loss split by window: their mean is the logged loss of that step
    logged = steps.set_index(["seed", "step"]).loss.loc[list(zip(texts.seed, texts.step))]
    assert np.allclose(texts.batch_loss, logged, rtol=1e-5)
    assert (texts.groupby(["seed", "step"]).burst.first().groupby("seed").size() == 3).all()
    # the gradients are the ones adam_step_anatomy measured on the same run: its fresh factor, replayed
    anatomy = results("adam_step_anatomy", "smoke")["lr-0.1"].table("anatomy")
    anatomy = anatomy[anatomy.group == "matrices"].set_index(["seed", "step"]).fresh
    matrices = matrices.sort_values("step")
    matrices["fresh"] = matrices.groupby(["seed", "tensor"]).g_rms.transform(lambda g: replay_fresh(g, c.beta2))
    replayed = matrices.groupby(["seed", "step"]).fresh.mean()
    assert np.allclose(replayed.loc[anatomy.index], anatomy, rtol=1e-3)
    assert len(texts) == len(c.seeds) * 3 * 2 and texts.text.str.len().gt(0).all()
