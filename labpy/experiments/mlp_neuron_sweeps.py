"""The many-model sweeps of the MLP neurons page, stored so the page reads them instead of training them live.

Two tasks, each a batch of models of `mlp_neurons`' architecture trained at once (`labpy.toy.mlp`, one thread,
so the same config gives the same numbers):
- `ten_digits`: a 64 → hidden → 10 ReLU MLP on all ten digits from `inits` initialisations, once reading the pixels
  and once with a learned linear layer in front of the hidden one (`dead_over_training`). Stored: which neurons are
  dead (pre-activation above 0 on no training image) every `every` steps, as spans of reads, and each model's test
  accuracy.
- `xor_inits`: the 2 → hidden → 2 XOR model from `inits` initialisations on each of `draws` draws of the jittered
  points (`train_many`). Stored: each model's accuracy and each hidden neuron's logic function at the four corners.

Why stored: on two cores these take about half a minute of training, which the page's 60-second budget cannot
spare. The dead masks are stored as spans (a neuron dead from one read to another), so the table stays small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..store import RunResult
from ..tasks.digits import CORNERS, all_digits, xor_split
from ..toy.mlp import corner_logic, dead_over_training, train_many
from ..validation import check_ranges, number_between, one_of
from .registry import Experiment, RunContext, register

TASKS = ("ten_digits", "xor_inits")
INPUTS = {"fixed pixels": False, "learned layer in front": True}     # ten_digits: the two ways to train


@dataclass(frozen=True)
class MLPSweepsConfig:
    task: str = "ten_digits"
    hidden: int = 32
    steps: int = 300
    lr: float = 0.01
    inits: int = 32                   # initialisations 0 … inits − 1 (PyTorch's default init, seeded)
    data_seed: int = 0                # digits: the split; XOR: the first draw of the points
    test_share: float = 0.3           # ten_digits: share of images held out
    every: int = 10                   # ten_digits: dead neurons read every this many steps (and at the end)
    draws: int = 1                    # xor_inits: draws data_seed, data_seed + 1, … of the points
    xor_per_corner: int = 50          # xor_inits: jittered copies of each corner, in train and in test
    xor_noise: float = 0.1            # xor_inits: standard deviation of the jitter

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("hidden", "steps", "inits", "every", "draws", "xor_per_corner"),
                     nonneg_int=("data_seed",), positive=("lr",), nonneg=("xor_noise",),
                     rules={"task": one_of(*TASKS), "test_share": number_between(0.05, 0.95)})

    @property
    def seeds(self) -> list[int]:
        return list(range(self.inits))

    @property
    def read_at(self) -> list[int]:
        """ten_digits: the step counts whose dead neurons are stored: 0, every, 2·every, …, and the last step."""
        return sorted({*range(0, self.steps + 1, self.every), self.steps})


def run(config: MLPSweepsConfig, ctx: RunContext) -> RunResult:
    tables = ten_digit_tables(config) if config.task == "ten_digits" else xor_tables(config)
    return RunResult(tables=tables, summary={"models": len(tables["models"])}, seed=config.data_seed)


def ten_digit_tables(config: MLPSweepsConfig) -> dict[str, pd.DataFrame]:
    split = all_digits(config.test_share, config.data_seed)
    dead_rows, model_rows = [], []
    for name, front in INPUTS.items():
        masks, accuracy = dead_over_training([split] * config.inits, config.hidden, config.lr, config.seeds,
                                             config.read_at, front=front)             # {step: (M, H)}, (M,)
        dead_rows += [{"input": name, **span} for span in dead_spans(masks, config.seeds)]
        model_rows += [{"input": name, "seed": s, "test_accuracy": float(a)} for s, a in zip(config.seeds, accuracy)]
    return {"dead_spans": pd.DataFrame(dead_rows, columns=["input", "seed", "neuron", "first", "last"]),
            "models": pd.DataFrame(model_rows)}


def dead_spans(masks: dict[int, np.ndarray], seeds: list[int]) -> list[dict]:
    """Each unbroken run of reads at which a neuron is dead, as (seed, neuron, first, last) with first and last the
    run's first and last read step: the masks {step: (M, H)} compressed without loss (most dead neurons stay dead)."""
    steps = sorted(masks)
    stacked = np.stack([masks[k] for k in steps])                                   # (reads, M, H)
    spans = []
    for m, h in zip(*np.nonzero(stacked.any(0))):
        start = None
        for i, dead in enumerate([*stacked[:, m, h], False]):
            if dead and start is None:
                start = i
            elif not dead and start is not None:
                spans.append({"seed": seeds[m], "neuron": int(h), "first": steps[start], "last": steps[i - 1]})
                start = None
    return spans


def xor_tables(config: MLPSweepsConfig) -> dict[str, pd.DataFrame]:
    draws = [config.data_seed + k for k in range(config.draws)]
    splits = {d: xor_split(config.xor_per_corner, config.xor_noise, d)[0] for d in draws}
    pairs = [(d, s) for d in draws for s in config.seeds]
    trained = train_many([splits[d] for d, _ in pairs], config.hidden, config.steps, config.lr,
                         [s for _, s in pairs])
    corners = torch.tensor(CORNERS, dtype=torch.float32)                                  # (4, 2)
    models = pd.DataFrame([{"draw": d, "init": s, "train_accuracy": t.train_accuracy,
                            "test_accuracy": t.test_accuracy} for (d, s), t in zip(pairs, trained)])
    logic = pd.DataFrame([{"draw": d, "init": s, "neuron": h, "logic": name} for (d, s), t in zip(pairs, trained)
                          for h, name in enumerate(corner_logic(t.model, corners))])
    return {"models": models, "logic": logic}


def dead_masks(entry) -> dict[str, tuple[dict[int, np.ndarray], np.ndarray]]:
    """A stored `ten_digits` run read back as `dead_over_training` returns it, per input:
    ({step: (inits, hidden) dead mask}, (inits,) test accuracies)."""
    config, spans, models = entry.config, entry.table("dead_spans"), entry.table("models")
    out = {}
    for name in INPUTS:
        masks = {step: np.zeros((config.inits, config.hidden), dtype=bool) for step in config.read_at}
        for span in spans[spans.input == name].itertuples():
            for step in config.read_at:
                if span.first <= step <= span.last:
                    masks[step][config.seeds.index(span.seed), span.neuron] = True
        out[name] = masks, models[models.input == name].sort_values("seed").test_accuracy.to_numpy()
    return out


register(Experiment(
    name="mlp_neuron_sweeps",
    title="The MLP neurons page's many-model sweeps: dead neurons on all ten digits, XOR from many initialisations",
    track="Toy models",
    page="experiments/mlp-neurons.qmd",
    version=1,
    config_type=MLPSweepsConfig,
    scales={
        "smoke": {"ten_digits": MLPSweepsConfig(hidden=8, steps=20, inits=3),
                  "xor_inits": MLPSweepsConfig(task="xor_inits", hidden=4, steps=20, inits=3, draws=2,
                                               xor_per_corner=5)},
        "cpu": {"ten_digits": MLPSweepsConfig(),
                "xor_inits": MLPSweepsConfig(task="xor_inits", hidden=8, steps=2000, inits=64, draws=5)},
    },
    run=run,
    description="32 digits MLPs on all ten digits, with and without a learned layer in front, their dead neurons "
                "every ten steps; 64 XOR initialisations on each of five draws of the points, their neurons' logic.",
))
