"""What does μP cost at width 128? μP taken apart, one change undone at a time, and three more seeds.

At width 128 `lr_mup`'s best ended above the standard parametrisation's best (each at its own best rate). μP makes
four changes at a width m times the base (`labpy.models.mup`): the hidden rates (× 1/m), the hidden weights' initial
size (× 1/√m), the attention logits' scale (1/head_dim) and the output logits (× 1/m). Here each is undone alone, at
width 128 and the three rates around both models' best, with the same seeds; and both whole parametrisations run again
with seeds 3–5 at their best grid rates, to see whether the gap outlives the seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.lab_lm import build_lab_lm
from ..models.mup import MODEL_PARTS, apply_mup
from ..train import TrainSpec
from ..validation import require
from .lr_mup import MupConfig
from .lr_sweep import SweepConfig, label
from .lr_sweep import run as sweep_run
from .lr_width import SMOKE_WIDTHLESS
from .registry import Experiment, register

PARTS = ("rates", *MODEL_PARTS)            # μP's four changes
PARTS_WIDTH = 128
PARTS_LRS = (2e-3, 5e-3, 1e-2)             # the standard model's best grid rate at width 128, μP's, and one above
MORE_SEEDS = (3, 4, 5)


@dataclass(frozen=True)
class MupPartsConfig(MupConfig):
    """μP relative to `base_width`, except the changes named in `standard_parts`, which stay standard (all four: the
    standard model)."""

    standard_parts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [part for part in self.standard_parts if part not in PARTS]
        require(self, not unknown, "standard_parts", f"names {unknown}, not μP changes; choose from {list(PARTS)}")

    def build_model(self, seed: int) -> torch.nn.Module:
        parts = tuple(part for part in MODEL_PARTS if part not in self.standard_parts)
        return apply_mup(build_lab_lm(self.hf_config(), seed), self.base_width, parts)

    def train_spec(self, seed: int, **changes) -> TrainSpec:
        if "rates" in self.standard_parts:
            return SweepConfig.train_spec(self, seed, **changes)
        return super().train_spec(seed, **changes)


def parts_config(width: int, lr: float, standard_parts: tuple[str, ...] = (), **common) -> MupPartsConfig:
    return MupPartsConfig(lr=lr, hidden_size=width, intermediate_size=3 * width, standard_parts=standard_parts,
                          **common)


def _scale(width: int = PARTS_WIDTH, lrs: tuple[float, ...] = PARTS_LRS, **common) -> dict[str, MupPartsConfig]:
    configs = {f"w{width}_{label(lr)}_standard-{part}": parts_config(width, lr, (part,), **common)
               for part in PARTS for lr in lrs}
    more = {**common, "seeds": MORE_SEEDS}
    configs |= {f"w{width}_{label(lr)}_{name}_seeds345": parts_config(width, lr, parts, **more)
                for name, parts in (("mup", ()), ("standard", PARTS)) for lr in lrs[:2]}
    return configs


register(Experiment(
    name="lr_mup_parts",
    title="What does μP cost at width 128? Each of its four changes undone alone, and three more seeds",
    track="Training dynamics",
    page="experiments/learning-rate-width.qmd",
    version=1,
    config_type=MupPartsConfig,
    scales={"smoke": {k: v for k, v in _scale(width=32, lrs=(1e-2, 2e-2), base_width=16, **SMOKE_WIDTHLESS).items()
                      if k.startswith(f"w32_{label(1e-2)}")},
            "cpu": _scale()},
    run=sweep_run,
    description="The μP sweep's model at width 128 with one of μP's changes (hidden rates, initial size, attention "
                "scale, output multiplier) left standard, lr 2e-3 to 1e-2, three seeds; and μP and the standard model "
                "with seeds 3–5.",
))
