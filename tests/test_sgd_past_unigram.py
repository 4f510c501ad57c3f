"""sgd_past_unigram: the config hands its momentum to the trainer (and a step without momentum is the plain gradient
step, by hand), a bad momentum is named, and the ten-times-longer run is ten times the sweep's steps."""

import pytest
import torch

from labpy.errors import ConfigError
from labpy.experiments.lr_sweep import SMOKE
from labpy.experiments.sgd_past_unigram import SgdConfig, _scale
from labpy.train import train


def test_the_spec_carries_sgd_and_the_momentum():
    spec = SgdConfig(**SMOKE, momentum=0.0).train_spec(seed=1)
    assert (spec.optimizer, spec.momentum, spec.seed) == ("sgd", 0.0, 1)
    assert SgdConfig(**SMOKE).train_spec(seed=0).momentum == 0.9


def test_without_momentum_each_step_is_the_rate_times_the_gradient():
    """loss (w − 3)², w₀ = 0, lr 0.1, no momentum: g₁ = −6, w₁ = 0.6; g₂ = −4.8, w₂ = 1.08 (with 0.9 it is 1.62)."""
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(()))
    spec = SgdConfig(**{**SMOKE, "steps": 2, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.0},
                     lr=0.1, momentum=0.0).train_spec(seed=0, grad_clip=None, eval_every=2, resume_every=10)
    train(model, lambda step: torch.zeros(1), lambda m, b: (m.w - 3) ** 2, spec, progress=False, device="cpu")
    assert model.w.item() == pytest.approx(1.08)


def test_bad_momentum_is_named():
    with pytest.raises(ConfigError, match="momentum"):
        SgdConfig(**SMOKE, momentum=1.0)


def test_the_long_run_is_ten_times_the_sweep():
    configs = _scale()
    assert configs["sgd-lr-1-long"].steps == 10 * configs["sgd-lr-3"].steps == 2000
    assert configs["sgd-no-momentum-lr-10"].momentum == 0.0 and configs["sgd-lr-3"].momentum == 0.9
    assert {c.optimizer for c in configs.values()} == {"sgd"}
    assert [k for k, c in configs.items() if c.weight_decay == 0] == ["sgd-lr-1-no-decay", "sgd-lr-0.1-no-decay",
                                                                      "sgd-lr-1-no-decay-long"]
    assert configs["sgd-lr-1-no-decay-long"].steps == 2000
