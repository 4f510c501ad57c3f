"""Where is the rate split's optimum, and which hidden matrices want the lower rate? Past 5e-2, and attention
against MLP.

`lr_split_limits` left the width-64 model's best split at its grid's corner: the hidden matrices at an eighth of an
embedding rate of 5e-2. This runs the embedding at 1e-1 (the hidden matrices at an eighth and a sixteenth of it), a
sixteenth at 5e-2, and, at 5e-2, the attention projections and the MLP matrices at different shares (a quarter and an
eighth, both ways round), to see which of the two wants the lower rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..validation import POSITIVE, check_ranges, or_none
from .lr_embedding_split import SplitRateConfig, split_config
from .lr_sweep import label
from .lr_sweep import run as sweep_run
from .lr_width import SMOKE_WIDTHLESS
from .registry import Experiment, register

ATTENTION_WEIGHTS = r"\.self_attn\.(q_proj|k_proj|v_proj|o_proj)\.weight$"
# (peak rate, hidden share, the attention's own share or None)
PARTS_GRID = ((1e-1, 0.125, None), (1e-1, 0.0625, None), (5e-2, 0.0625, None), (5e-2, 0.125, 0.25), (5e-2, 0.25, 0.125))


@dataclass(frozen=True)
class PartSplitConfig(SplitRateConfig):
    """The split sweep's config; `attention_lr_scale`, when set, gives the attention projections their own share of
    the rate (the MLP matrices keep `hidden_lr_scale`)."""

    attention_lr_scale: float | None = None
    SHARE_PATTERNS = {"attention_lr_scale": ATTENTION_WEIGHTS}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, rules={"attention_lr_scale": or_none(POSITIVE)})


def _name(width: int, lr: float, share: float, attention: float | None) -> str:
    parts = f"hidden-x{share:g}" if attention is None else f"attention-x{attention:g}_mlp-x{share:g}"
    return f"w{width}_{label(lr)}_{parts}"


def _scale(**common) -> dict[str, PartSplitConfig]:
    width = common.pop("hidden_size", 64)
    return {_name(width, lr, share, attention):
            split_config(width, lr, share, PartSplitConfig, attention_lr_scale=attention, **common)
            for lr, share, attention in PARTS_GRID}


register(Experiment(
    name="lr_split_parts",
    title="Where is the rate split's optimum, and do attention and MLP want different rates?",
    track="Training dynamics",
    page="experiments/learning-rate-width.qmd",
    version=1,
    config_type=PartSplitConfig,
    scales={"smoke": _scale(hidden_size=16, **SMOKE_WIDTHLESS), "cpu": _scale()},
    run=sweep_run,
    description="The width-64 sweep model with the embedding at 5e-2 or 1e-1 and the hidden matrices at an eighth or "
                "a sixteenth of it, and with the attention and MLP matrices at a quarter and an eighth, both ways.",
))
