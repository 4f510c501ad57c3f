"""Which layer's output dropout keeps the 3-layer model's induction circuit from forming?

`dropout_route` found that dropout on the attention outputs (p = 0.1), not on the attention probabilities, keeps
`attention_depth`'s 3-layer model from growing a previous-token head and an induction head. This trains the same model
(seed 0, same data and mask streams) with that dropout on only some layers' outputs:

- `output-layer0-s0`: layer 0's output only, where a previous-token head writes what a later induction head's keys
  read (K-composition);
- `output-layers12-s0`: layers 1 and 2's outputs only, where the induction head writes what the unembedding reads;
- `output-layer1-s0`, `output-layer2-s0`: layer 1's only (the induction head's layer), layer 2's only (the last);
- `output-layer1-p02-s0`, `output-layer2-p02-s0`, `output-layer1-p03-s0`: one layer's only, at a higher rate. Dropout
  of p scales the kept units by 1/(1 - p), so it adds noise of variance p/(1 - p) times each unit's square: 0.25 at
  p = 0.2 and 0.43 at 0.3, against 0.11 at 0.1 on each of two layers (0.22 together). Is it the total noise that keeps
  the circuit from forming, or does it need one of the two writes clean?
- `output-layers12-s1`: layers 1 and 2's, seed 1 (its own initialisation, data and masks);
- `output-layers12-p005-s0`, `-s1`, `output-layers12-p0075-s0`: layers 1 and 2's at lower rates, 0.05 (noise 0.105
  over the two, below one layer's at 0.1) and 0.075: does a lower rate on both let the circuit form?
- `output-layers12-p001-s0`, `output-layers12-p002-s0`: lower still, 0.01 and 0.02; `output-layers12-p005-long-s0`:
  0.05 for 8000 steps (a block, or a longer delay?).

Stored as `dropout_route` stores its runs: training curves, head scores at every checkpoint, and at the end the loss
by region and where each head looks on ambiguous targets; no checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..validation import require
from .attention_depth import dropout_hooks
from .dropout_route import DropoutRouteConfig, run
from .registry import Experiment, register


@dataclass(frozen=True)
class DropoutLayersConfig(DropoutRouteConfig):
    dropout_at: str = "output"
    dropout_layers: tuple[int, ...] = (0,)   # the layers whose dropout is on; the others train without

    def __post_init__(self) -> None:
        super().__post_init__()
        layers = self.dropout_layers
        require(self, len(layers) > 0 and all(isinstance(v, int) and 0 <= v < self.n_layers for v in layers)
                and len(set(layers)) == len(layers), "dropout_layers",
                f"is out of range; it must name distinct layers from 0 to {self.n_layers - 1}, e.g. (0,) or (1, 2)")

    def dropout_hooks(self, model, generator: torch.Generator) -> list[tuple[str, object]]:
        return dropout_hooks(model, self.dropout, generator, self.sites, self.dropout_layers)


def _configs(**common) -> dict[str, DropoutLayersConfig]:
    first = DropoutLayersConfig(**common)
    return {"output-layer0-s0": first, "output-layers12-s0": replace(first, dropout_layers=(1, 2)),
            "output-layer1-s0": replace(first, dropout_layers=(1,)),
            "output-layer2-s0": replace(first, dropout_layers=(2,)),
            "output-layer1-p02-s0": replace(first, dropout_layers=(1,), dropout=0.2),
            "output-layer2-p02-s0": replace(first, dropout_layers=(2,), dropout=0.2),
            "output-layer1-p03-s0": replace(first, dropout_layers=(1,), dropout=0.3),
            "output-layers12-s1": replace(first, dropout_layers=(1, 2), seed=1),
            "output-layers12-p005-s0": replace(first, dropout_layers=(1, 2), dropout=0.05),
            "output-layers12-p005-s1": replace(first, dropout_layers=(1, 2), dropout=0.05, seed=1),
            "output-layers12-p0075-s0": replace(first, dropout_layers=(1, 2), dropout=0.075),
            "output-layers12-p001-s0": replace(first, dropout_layers=(1, 2), dropout=0.01),
            "output-layers12-p002-s0": replace(first, dropout_layers=(1, 2), dropout=0.02),
            "output-layers12-p005-long-s0": replace(first, dropout_layers=(1, 2), dropout=0.05,
                                                    steps=2 * first.steps)}


register(Experiment(
    name="dropout_layers",
    title="Which layer's output dropout keeps the induction circuit from forming",
    track="Attention & circuits",
    page="experiments/attention-depth.qmd",
    version=1,
    config_type=DropoutLayersConfig,
    scales={"smoke": _configs(steps=40, eval_every=20, eval_batch=32, score_batch=8, checkpoint_every=20),
            "cpu": _configs(steps=4000, checkpoint_every=500)},
    run=run,
    description="attention_depth's 3-layer model (seed 0) trained 4000 steps with dropout on layer 0's attention "
                "output only, on layers 1 and 2's, on layer 1's and on layer 2's (p = 0.1, then 0.2 and 0.3 on one "
                "layer), and on layers 1 and 2's at 0.01 to 0.075 (0.05 also for 8000 steps) and for seed 1: head "
                "scores over training, and the loss by region.",
))
