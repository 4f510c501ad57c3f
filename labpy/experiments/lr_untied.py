"""Does a readout of its own change the rate story? The width-64 model untied, at single rates and split.

`lr_split_vo` found the width-64 split model 0.27 nats better with its readout untied from the embedding (at the
same rates), and better than any tied split. Here the untied model runs the single-rate sweep's rates around its
optimum, the two best tied splits, and those two splits with the readout at the hidden matrices' rate instead of the
embedding's, to see whether untied the split still wins and which rate the readout wants.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..validation import POSITIVE, check_ranges, or_none, require
from .lr_embedding_split import split_config
from .lr_split_vo import ValueSplitConfig
from .lr_sweep import label
from .lr_sweep import run as sweep_run
from .lr_width import SMOKE_WIDTHLESS
from .registry import Experiment, register

READOUT_WEIGHT = r"^lm_head\.weight$"
UNTIED_SINGLE_LRS = (2e-3, 5e-3, 1e-2, 2e-2)
UNTIED_SPLITS = ((5e-2, 0.125), (1e-1, 0.0625))       # (peak rate, hidden share): the best tied splits


@dataclass(frozen=True)
class UntiedConfig(ValueSplitConfig):
    """`ValueSplitConfig` untied by default, with the readout's own share `readout_lr_scale` (None: the peak rate)."""

    tie_readout: bool = False
    readout_lr_scale: float | None = None
    SHARE_PATTERNS = {"readout_lr_scale": READOUT_WEIGHT, **ValueSplitConfig.SHARE_PATTERNS}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, rules={"readout_lr_scale": or_none(POSITIVE)})
        require(self, self.readout_lr_scale is None or not self.tie_readout, "readout_lr_scale",
                "needs tie_readout = False: a tied readout is the embedding and takes its rate")


def _scale(**common) -> dict[str, UntiedConfig]:
    width = common.pop("hidden_size", 64)

    def config(lr: float, share: float = 1.0, readout: float | None = None) -> UntiedConfig:
        return split_config(width, lr, share, UntiedConfig, readout_lr_scale=readout, **common)

    configs = {f"w{width}_untied_{label(lr)}": config(lr) for lr in UNTIED_SINGLE_LRS}
    for lr, share in UNTIED_SPLITS:
        configs[f"w{width}_untied_{label(lr)}_hidden-x{share:g}"] = config(lr, share)
        configs[f"w{width}_untied_{label(lr)}_hidden-x{share:g}_readout-x{share:g}"] = config(lr, share, share)
    return configs


register(Experiment(
    name="lr_untied",
    title="Does a readout of its own change the rate story?",
    track="Training dynamics",
    page="experiments/learning-rate-width.qmd",
    version=1,
    config_type=UntiedConfig,
    scales={"smoke": _scale(hidden_size=16, **SMOKE_WIDTHLESS), "cpu": _scale()},
    run=sweep_run,
    description="The width-64 sweep model with its readout untied: single rates 2e-3 to 2e-2, and the splits "
                "(5e-2, an eighth; 1e-1, a sixteenth) with the readout at the embedding's rate or the hidden one.",
))
