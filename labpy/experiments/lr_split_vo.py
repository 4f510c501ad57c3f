"""Why do the attention's values and outputs want the low rate? The values apart from the outputs, and the readout
untied from the embedding.

`lr_split_qk` found the width-64 split model (embedding 5e-2, MLPs at an eighth) hurt when its values and outputs
take a quarter of the rate and not when its queries and keys do. One guess: the values and outputs lie on the path
from the embedding straight back to the tied readout, which the embedding's high rate already moves. Here the values
and the outputs take the quarter apart; and the queries-and-keys pair of `lr_split_qk` reruns with the readout untied
from the embedding (its own matrix, at the embedding's rate), so the embedding's steps no longer move the readout.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..validation import POSITIVE, check_ranges, or_none
from .lr_embedding_split import split_config
from .lr_split_qk import QKSplitConfig
from .lr_sweep import label
from .lr_sweep import run as sweep_run
from .lr_width import SMOKE_WIDTHLESS
from .registry import Experiment, register

VALUE_WEIGHTS = r"\.self_attn\.v_proj\.weight$"
VO_LR, VO_MLP = 5e-2, 0.125                                  # lr_split_qk's peak rate and MLP share
# (queries and keys, values, outputs: shares of the peak rate; the readout tied to the embedding)
VO_GRID = ((0.125, 0.25, 0.125, True), (0.125, 0.125, 0.25, True),
           (0.25, 0.125, 0.125, False), (0.125, 0.25, 0.25, False))


@dataclass(frozen=True)
class ValueSplitConfig(QKSplitConfig):
    """`QKSplitConfig` with the values' own share `v_lr_scale` (the outputs keep `attention_lr_scale`), and
    `tie_readout` False for a readout of its own (trained at the peak rate, as the tied one was)."""

    v_lr_scale: float | None = None
    tie_readout: bool = True
    SHARE_PATTERNS = {"v_lr_scale": VALUE_WEIGHTS, **QKSplitConfig.SHARE_PATTERNS}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, rules={"v_lr_scale": or_none(POSITIVE)})

    def hf_config(self):
        config = super().hf_config()
        config.tie_word_embeddings = self.tie_readout
        return config


def _name(width: int, qk: float, v: float, o: float, tied: bool) -> str:
    return f"w{width}_{label(VO_LR)}_qk-x{qk:g}_v-x{v:g}_o-x{o:g}_mlp-x{VO_MLP:g}" + ("" if tied else "_untied")


def _scale(**common) -> dict[str, ValueSplitConfig]:
    width = common.pop("hidden_size", 64)
    return {_name(width, qk, v, o, tied):
            split_config(width, VO_LR, VO_MLP, ValueSplitConfig, attention_lr_scale=o, qk_lr_scale=qk, v_lr_scale=v,
                         tie_readout=tied, **common)
            for qk, v, o, tied in VO_GRID}


register(Experiment(
    name="lr_split_vo",
    title="Why do the values and outputs want the low rate? Each apart, and the readout untied",
    track="Training dynamics",
    page="experiments/learning-rate-width.qmd",
    version=1,
    config_type=ValueSplitConfig,
    scales={"smoke": _scale(hidden_size=16, **SMOKE_WIDTHLESS), "cpu": _scale()},
    run=sweep_run,
    description="The width-64 split model at 5e-2 (MLPs at an eighth): the values or the outputs alone at a quarter; "
                "and, with the readout untied, the queries and keys or the values and outputs at a quarter.",
))
