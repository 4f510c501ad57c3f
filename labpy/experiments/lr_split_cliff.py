"""What softens the hidden matrices' cliff: the embedding's rate, or the norms' and biases'?

In `lr_split_width` the hidden matrices at 2.5e-2 ended far lower at widths 32 and 64 with the peak rate at 2e-1 than
at 1e-1. The peak rate is the tied embedding's, the norms' gains' and the attention biases' at once. Here, with the
hidden matrices at 2.5e-2 throughout, one of them at a time takes the other peak rate: the norms at 2e-1 in a 1e-1
run; the embedding at 1e-1 in a 2e-1 run; and the norms and biases at 1e-1 in a 2e-1 run.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..validation import POSITIVE, check_ranges, or_none
from .lr_embedding_split import SplitRateConfig, split_config
from .lr_sweep import label
from .lr_sweep import run as sweep_run
from .lr_width import SMOKE_WIDTHLESS
from .registry import Experiment, register

EMBEDDING_WEIGHT = r"^model\.embed_tokens\.weight$"
NORM_WEIGHTS = r"norm\.weight$"                     # every RMSNorm's gain, the final one included
BIASES = r"\.bias$"                                 # the query, key and value biases
CLIFF_WIDTHS, CLIFF_HIDDEN_LR = (32, 64), 2.5e-2
# (peak rate, embedding share, norms' share, biases' share); None: the peak rate
CLIFF_GRID = ((1e-1, None, 2.0, None), (2e-1, 0.5, None, None), (2e-1, None, 0.5, 0.5))


@dataclass(frozen=True)
class PeakPartsConfig(SplitRateConfig):
    """`SplitRateConfig` whose peak-rate parts can leave the peak: the embedding (`embedding_lr_scale`), the norms'
    gains (`norm_lr_scale`) and the biases (`bias_lr_scale`), each a share of `lr` (None: the peak rate itself)."""

    embedding_lr_scale: float | None = None
    norm_lr_scale: float | None = None
    bias_lr_scale: float | None = None
    SHARE_PATTERNS = {"embedding_lr_scale": EMBEDDING_WEIGHT, "norm_lr_scale": NORM_WEIGHTS,
                      "bias_lr_scale": BIASES}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, rules={f: or_none(POSITIVE) for f in self.SHARE_PATTERNS})


def _name(width: int, lr: float, embedding: float | None, norms: float | None, biases: float | None) -> str:
    parts = "".join(f"_{part}-x{share:g}" for part, share in (("embedding", embedding), ("norms", norms),
                                                              ("biases", biases)) if share is not None)
    return f"w{width}_{label(lr)}_hidden-{CLIFF_HIDDEN_LR:g}{parts}"


def _scale(widths: tuple[int, ...] = CLIFF_WIDTHS, **common) -> dict[str, PeakPartsConfig]:
    return {_name(w, lr, e, n, b):
            split_config(w, lr, CLIFF_HIDDEN_LR / lr, PeakPartsConfig, embedding_lr_scale=e, norm_lr_scale=n,
                         bias_lr_scale=b, **common)
            for w in widths for lr, e, n, b in CLIFF_GRID}


register(Experiment(
    name="lr_split_cliff",
    title="What softens the hidden matrices' cliff: the embedding's rate, or the norms' and biases'?",
    track="Training dynamics",
    page="experiments/learning-rate-width.qmd",
    version=1,
    config_type=PeakPartsConfig,
    scales={"smoke": _scale((16,), **SMOKE_WIDTHLESS), "cpu": _scale()},
    run=sweep_run,
    description="The sweep model at widths 32 and 64 with the hidden matrices at 2.5e-2: the norms at 2e-1 in a 1e-1 "
                "run, the embedding at 1e-1 in a 2e-1 run, the norms and biases at 1e-1 in a 2e-1 run.",
))
