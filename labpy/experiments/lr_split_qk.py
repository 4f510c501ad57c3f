"""Which attention weights want the low rate, and where does the embedding's rate stop helping?

`lr_split_parts` found the attention projections, not the MLPs, wanting the lower rate. Here, at an embedding rate of
5e-2 with the MLP matrices at an eighth of it, the queries and keys and the values and outputs take a quarter and an
eighth, both ways round; and the embedding goes to 2e-1 with the hidden matrices at 6.25e-3, the rate they had in the
best run so far (1e-1, a sixteenth).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..validation import POSITIVE, check_ranges, or_none
from .lr_embedding_split import split_config
from .lr_split_parts import PartSplitConfig
from .lr_sweep import label
from .lr_sweep import run as sweep_run
from .lr_width import SMOKE_WIDTHLESS
from .registry import Experiment, register

QK_WEIGHTS = r"\.self_attn\.(q_proj|k_proj)\.weight$"
QK_GRID = ((5e-2, 0.125, 0.125, 0.25), (5e-2, 0.125, 0.25, 0.125),    # (peak rate, MLP, values/outputs, queries/keys)
           (2e-1, 0.03125, None, None))


@dataclass(frozen=True)
class QKSplitConfig(PartSplitConfig):
    """`PartSplitConfig` with the queries' and keys' own share `qk_lr_scale` (the values and outputs keep
    `attention_lr_scale`)."""

    qk_lr_scale: float | None = None
    SHARE_PATTERNS = {"qk_lr_scale": QK_WEIGHTS, **PartSplitConfig.SHARE_PATTERNS}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, rules={"qk_lr_scale": or_none(POSITIVE)})


def _name(width: int, lr: float, mlp: float, vo: float | None, qk: float | None) -> str:
    parts = f"hidden-x{mlp:g}" if qk is None else f"qk-x{qk:g}_vo-x{vo:g}_mlp-x{mlp:g}"
    return f"w{width}_{label(lr)}_{parts}"


def _scale(**common) -> dict[str, QKSplitConfig]:
    width = common.pop("hidden_size", 64)
    return {_name(width, lr, mlp, vo, qk):
            split_config(width, lr, mlp, QKSplitConfig, attention_lr_scale=vo, qk_lr_scale=qk, **common)
            for lr, mlp, vo, qk in QK_GRID}


register(Experiment(
    name="lr_split_qk",
    title="Which attention weights want the low rate, and where does the embedding's rate stop helping?",
    track="Training dynamics",
    page="experiments/learning-rate-width.qmd",
    version=1,
    config_type=QKSplitConfig,
    scales={"smoke": _scale(hidden_size=16, **SMOKE_WIDTHLESS), "cpu": _scale()},
    run=sweep_run,
    description="The width-64 split model at 5e-2 (MLPs at an eighth) with the queries and keys and the values and "
                "outputs at a quarter and an eighth, both ways; and the embedding at 2e-1, the hidden matrices at "
                "6.25e-3.",
))
