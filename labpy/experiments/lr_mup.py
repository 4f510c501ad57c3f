"""Does μP hold the best learning rate in place across widths? The width sweep again, μP-parametrised.

Under the standard parametrisation the sweep's best rate fell about as one over the width (`lr_width`). μP
(Yang et al. 2022) rescales the hidden layers' rates and initialisation, the attention logits and the output logits
with the width (`labpy.models.mup`), relative to a base width, so that a rate tuned at one width is the best at
another. The base width is the sweep's 64, so the μP model at width 64 is the stored sweep's model; that column is
run again here as a check that nothing else changed. Widths 32, 64 and 128 (MLP three times the width, four heads),
the six rates around the width-64 optimum, three seeds each; the embedding stays tied, as in every lab LM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.lab_lm import build_lab_lm
from ..models.mup import apply_mup, mup_lr_scales
from ..train import TrainSpec
from ..validation import require
from .lr_sweep import SweepConfig, label
from .lr_sweep import run as sweep_run
from .lr_width import SMOKE_WIDTHLESS, WIDTH_LRS
from .registry import Experiment, register

MUP_WIDTHS = (32, 64, 128)
BASE_WIDTH = 64                  # the stored sweep's width: there μP and the standard parametrisation coincide


@dataclass(frozen=True)
class MupConfig(SweepConfig):
    """The sweep's config, μP-parametrised relative to `base_width`."""

    base_width: int = BASE_WIDTH

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self, isinstance(self.base_width, int) and self.base_width >= self.n_heads
                and self.base_width % self.n_heads == 0, "base_width",
                f"is out of range; it must be a positive multiple of n_heads = {self.n_heads} (its head width)")

    def build_model(self, seed: int) -> torch.nn.Module:
        return apply_mup(build_lab_lm(self.hf_config(), seed), self.base_width)

    def train_spec(self, seed: int, **changes) -> TrainSpec:
        scales = mup_lr_scales(self.hidden_size, self.base_width)
        return super().train_spec(seed, **{"lr_scales": scales if scales[0][1] != 1 else (), **changes})


def mup_config(width: int, lr: float, **common) -> MupConfig:
    """The μP sweep's model at `width`, its MLP three times as wide."""
    return MupConfig(lr=lr, hidden_size=width, intermediate_size=3 * width, **common)


def _scale(widths: tuple[int, ...] = MUP_WIDTHS, **common) -> dict[str, MupConfig]:
    return {f"mup_w{width}_{label(lr)}": mup_config(width, lr, **common) for width in widths for lr in WIDTH_LRS}


register(Experiment(
    name="lr_mup",
    title="Does μP hold the best learning rate across widths? The width sweep, μP-parametrised",
    track="Training dynamics",
    page="experiments/learning-rate-width.qmd",
    version=1,
    config_type=MupConfig,
    scales={"smoke": {k: v for k, v in _scale(widths=(8, 32), base_width=16, **SMOKE_WIDTHLESS).items()
                      if k.endswith(label(1e-2))},
            "cpu": _scale()},
    run=sweep_run,
    description="The learning-rate sweep's model μP-parametrised relative to width 64, at widths 32, 64 and 128 "
                "(MLP three times the width), lr 1e-3 to 5e-2, three seeds each: does the best rate stay put?",
))
