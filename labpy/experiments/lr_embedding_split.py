"""Does the lab LM want its embedding at a higher rate than its hidden layers? The rate split without μP.

Taken apart at width 128 (`lr_mup_parts`), μP without its output multiplier ended far below both μP and the
standard parametrisation: a model whose tied embedding learns at twice the hidden matrices' rate. Here the split
alone, in the standard parametrisation (nothing else of μP): the peak rate `lr` is the embedding's (and the norms' and
biases'), and the hidden matrices (attention and MLP projections) take `lr × hidden_lr_scale`. At width 64, where μP
and the standard model coincide, with the hidden rate a half and a quarter of the embedding's; at width 128 with a
half, the split μP's rates make there. The single-rate runs are the stored sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..models.mup import HIDDEN_WEIGHTS
from ..train import TrainSpec
from ..validation import check_ranges
from .lr_sweep import SweepConfig, label
from .lr_sweep import run as sweep_run
from .lr_width import SMOKE_WIDTHLESS
from .registry import Experiment, register

SPLIT_SCALES = {64: (0.5, 0.25), 128: (0.5,)}           # hidden rate ÷ embedding rate, by width
SPLIT_LRS = {64: (1e-3, 2e-3, 5e-3, 1e-2), 128: (1e-3, 2e-3, 5e-3)}


@dataclass(frozen=True)
class SplitRateConfig(SweepConfig):
    """The sweep's config with the hidden matrices' rate `hidden_lr_scale` times the rest's.

    A variant gives more parameter groups their own share: an optional field (None: the share they would take
    anyway), range-checked in its own `__post_init__`, and the pattern naming its parameters, in `SHARE_PATTERNS`,
    most specific first (the first match counts).
    """

    hidden_lr_scale: float = 1.0
    SHARE_PATTERNS: ClassVar[dict[str, str]] = {}        # optional share field -> its parameters' name pattern

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("hidden_lr_scale",))

    def rate_shares(self) -> tuple[tuple[str, float], ...]:
        """(parameter pattern, share of the peak rate) pairs, the first match counting."""
        own = tuple((pattern, getattr(self, field)) for field, pattern in self.SHARE_PATTERNS.items()
                    if getattr(self, field) is not None)
        return own + ((HIDDEN_WEIGHTS, self.hidden_lr_scale),)

    def train_spec(self, seed: int, **changes) -> TrainSpec:
        shares = self.rate_shares()
        scales = shares if any(share != 1 for _, share in shares) else ()   # all 1: the plain sweep's spec
        return super().train_spec(seed, **{"lr_scales": scales, **changes})


def split_config(width: int, lr: float, hidden_lr_scale: float, config_type: type[SplitRateConfig] = SplitRateConfig,
                 **fields) -> SplitRateConfig:
    """A split config of `config_type` at `width` (the MLP three times as wide); `fields` set the rest."""
    return config_type(lr=lr, hidden_size=width, intermediate_size=3 * width, hidden_lr_scale=hidden_lr_scale,
                       **fields)


def _scale(widths: dict[int, tuple[float, ...]] = SPLIT_SCALES, **common) -> dict[str, SplitRateConfig]:
    return {f"w{width}_{label(lr)}_hidden-x{scale:g}": split_config(width, lr, scale, **common)
            for width, scales in widths.items() for scale in scales for lr in SPLIT_LRS.get(width, (1e-2,))}


register(Experiment(
    name="lr_embedding_split",
    title="Does the lab LM want its embedding at a higher rate than its hidden layers?",
    track="Training dynamics",
    page="experiments/learning-rate-width.qmd",
    version=1,
    config_type=SplitRateConfig,
    scales={"smoke": _scale({8: (0.5,), 32: (0.5,)}, **SMOKE_WIDTHLESS),
            "cpu": _scale()},
    run=sweep_run,
    description="The learning-rate sweep's model (standard parametrisation) with the hidden matrices at a half or a "
                "quarter of the embedding's rate: width 64 at lr 1e-3 to 1e-2, width 128 (a half) at 1e-3 to 5e-3.",
))
