"""sgd_decoupled: SGD with the decay decoupled (shrink, then step; the decay kept out of the momentum) against torch's
SGD with the decay as L2, both by hand on a one-weight problem; the configs; a bad optimizer is named."""

import pytest
import torch

from labpy.errors import ConfigError
from labpy.experiments.lr_sweep import SMOKE
from labpy.experiments.registry import get_experiment
from labpy.experiments.sgd_past_unigram import SgdConfig
from labpy.train import TrainSpec, train


def _three_steps(optimizer: str) -> float:
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(()))
    spec = TrainSpec(steps=3, lr=0.1, optimizer=optimizer, momentum=0.9, weight_decay=0.5, grad_clip=None,
                     eval_every=3, resume_every=10)
    train(model, lambda step: torch.zeros(1), lambda m, b: (m.w - 3) ** 2, spec, progress=False, device="cpu")
    return model.w.item()


def test_decoupled_and_l2_decay_by_hand():
    """loss (w − 3)², w₀ = 0, lr 0.1, momentum 0.9, decay 0.5; g = 2(w − 3).
    Decoupled: w ← w·0.95, buf ← 0.9·buf + g, w ← w − 0.1·buf:
    w = 0.6, then 0.57 + 1.02 = 1.59, then 1.5105 + 1.2 = 2.7105.
    L2: g ← g + 0.5·w inside the buffer: buf = −6, −9.9, −10.935, so w = 0.6, 1.59, 2.6835."""
    assert _three_steps("sgdw") == pytest.approx(2.7105, abs=1e-5)
    assert _three_steps("sgd") == pytest.approx(2.6835, abs=1e-5)


def test_configs_are_decoupled_sgd_with_the_sweeps_momentum():
    configs = get_experiment("sgd_decoupled").configs("cpu")
    assert {(c.optimizer, c.momentum) for c in configs.values()} == {("sgdw", 0.9)}
    assert {(c.lr, c.weight_decay, c.steps) for c in configs.values()} == {
        (1.0, 0.1, 200), (0.1, 0.1, 200), (1.0, 0.01, 200), (1.0, 0.01, 2000)}
    assert configs["sgdw-lr-1-decay-0.1"].train_spec(seed=0).optimizer == "sgdw"


def test_bad_optimizer_is_named():
    with pytest.raises(ConfigError, match="optimizer = 'lars'.*adamw, sgd, sgdw"):
        SgdConfig(**SMOKE, optimizer="lars")


def test_smoke_run_fills_the_tables(tmp_store):
    from labpy import results

    runs = results("sgd_decoupled", "smoke")
    for entry in runs.entries.values():
        seeds = entry.table("seeds")
        assert list(seeds.seed) == list(entry.config.seeds) and seeds.final_val_loss.notna().all()
