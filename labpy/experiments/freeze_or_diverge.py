"""Would the sweep model diverge where it froze, without its RMSNorms or without Adam?

At lr 0.1 to 1 the sweep's model neither diverges nor learns: it freezes at the unigram line. Two of its parts may
be what turns a divergence into a freeze. The RMSNorms rescale every layer's input (and the stream before the
unembedding) to unit size, so weights that grow cannot blow the activations up; and Adam writes about the rate per
weight whatever the gradient's size, so a shrinking gradient does not shrink its step (nor does a large one enlarge
it). This reruns the sweep (same corpus, seeds, schedule, clip and decay) with each taken away in turn:

- **no norm**: every RMSNorm replaced by the identity, AdamW as in the sweep, at lr 1e-2 (a healthy rate), 0.1 and 1;
- **SGD**: the sweep's model, trained by SGD with momentum 0.9 (its decay as an L2 term, torch's SGD), at lr 0.1, 1
  and 10 (SGD's step is the rate times the gradient, so its rates sit higher than Adam's).

The score and tables are the sweep's (`lr_sweep.run`): the held-out loss, the training curve, the step at which the
loss turned non-finite if it did.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..train import TrainSpec
from ..validation import check_ranges, one_of
from .lr_sweep import SMOKE, SweepConfig
from .lr_sweep import run as sweep_run
from .registry import Experiment, register

NO_NORM_LRS = (1e-2, 0.1, 1.0)
SGD_LRS = (0.1, 1.0, 10.0)


@dataclass(frozen=True)
class VariantConfig(SweepConfig):
    norm: str = "rms"            # "rms" (the sweep's RMSNorms) or "none" (each replaced by the identity)
    optimizer: str = "adamw"     # "adamw" (the sweep's), "sgd" (momentum 0.9, decay as L2) or "sgdw" (decay decoupled)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, rules={"norm": one_of("rms", "none"), "optimizer": one_of("adamw", "sgd", "sgdw")})

    def build_model(self, seed: int) -> torch.nn.Module:
        model = super().build_model(seed)
        if self.norm == "none":
            strip_norms(model)
        return model

    def train_spec(self, seed: int, **changes) -> TrainSpec:
        return super().train_spec(seed, **{"optimizer": self.optimizer, **changes})


def strip_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every RMSNorm of a lab LM (two per layer and the final one) by the identity, in place."""
    for layer in model.model.layers:
        layer.input_layernorm = torch.nn.Identity()
        layer.post_attention_layernorm = torch.nn.Identity()
    model.model.norm = torch.nn.Identity()
    return model


def label(config: VariantConfig) -> str:
    return f"{'no-norm' if config.norm == 'none' else config.optimizer}-lr-{config.lr:g}"


def _scale(**common) -> dict[str, VariantConfig]:
    configs = [VariantConfig(lr=lr, norm="none", **common) for lr in NO_NORM_LRS]
    configs += [VariantConfig(lr=lr, optimizer="sgd", **common) for lr in SGD_LRS]
    return {label(c): c for c in configs}


register(Experiment(
    name="freeze_or_diverge",
    title="Without RMSNorm, or with SGD for Adam: does the sweep model diverge where it froze?",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=VariantConfig,
    scales={"smoke": {k: v for k, v in _scale(**SMOKE).items() if k in ("no-norm-lr-0.1", "sgd-lr-1")},
            "cpu": _scale()},
    run=sweep_run,
    description="The learning-rate sweep's model without its RMSNorms (AdamW at lr 1e-2, 0.1, 1) and with SGD "
                "instead of AdamW (momentum 0.9, lr 0.1, 1, 10): does it diverge, freeze or learn?",
))
