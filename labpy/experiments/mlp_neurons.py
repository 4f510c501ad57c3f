"""Single neurons of a one-hidden-layer ReLU MLP: the user's own MLP questions, on digits "1" against "7" and XOR.

Run (one entry per task): train the same architecture from each of `seeds` (full-batch Adam, `labpy.toy.mlp`)
and, per model, measure every hidden neuron's class selectivity on the training inputs, the effect of knocking
it out alone, and a threshold sweep that knocks out every neuron whose |class difference| is above a threshold
(beside the same number of smallest-difference and random neurons), all scored on the test inputs. For every
pair of seeds: the activation correlation of every neuron with every neuron of the other model, the optimal
one-to-one matching, and whether knocking out matched neurons does the same in both. Digits only: the "add the
top bar" path that turns each test "1" towards a "7" one pixel at a time (and the reverse, removing it from each
"7"), with the hidden activations along it. XOR only: each neuron's activation at the four exact corners.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..store import RunResult
from ..tasks.digits import CORNER_NAMES, CORNERS, SIDE, digit_pair, xor_split
from ..toy.mlp import (bar_path, bar_pixels, class_selectivity, corner_logic, correlation_matrix, flip_steps,
                       hidden_activations, knockout_sweep, match_neurons, matched_knockouts, neuron_changes,
                       path_predictions, seed_pairs, single_knockouts, train_mlp, within_class)
from ..validation import check_ranges, int_between, number_between, one_of, require
from .registry import Experiment, RunContext, register

TASKS = ("digits", "xor")
DIGITS = (1, 7)       # label 0 is "1", label 1 is "7"


@dataclass(frozen=True)
class MLPNeuronsConfig:
    task: str = "digits"
    hidden: int = 32
    steps: int = 300
    lr: float = 0.01
    weight_decay: float = 0.0
    seeds: tuple[int, ...] = (0, 1)       # initialisations of the same architecture; every pair is matched
    data_seed: int = 0                    # the train/test split (digits) or the jittered points (XOR)
    test_share: float = 0.3               # digits: share of images held out
    xor_per_corner: int = 50              # XOR: jittered copies of each corner, in train and in test
    xor_noise: float = 0.1                # XOR: standard deviation of the jitter
    bar_rows: int = 2                     # digits: the top bar lies in this many top rows ...
    bar_margin: float = 0.15              # ... where the mean "7" exceeds the mean "1" by more than this
    random_draws: int = 20                # random knockout sets per size, for the control

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("hidden", "steps", "xor_per_corner", "random_draws"),
                     nonneg_int=("seeds", "data_seed"), positive=("lr",), nonneg=("weight_decay", "xor_noise"),
                     nonempty=("seeds",),
                     rules={"task": one_of(*TASKS), "test_share": number_between(0.05, 0.95),
                            "bar_rows": int_between(1, SIDE), "bar_margin": number_between(0, 1)})
        require(self, len(set(self.seeds)) >= 2 and len(set(self.seeds)) == len(self.seeds), "seeds",
                "is out of range; it needs at least two different seeds, with no repeats, to match neurons between "
                "models (e.g. --set seeds=0,1)", hint=False)


def run(config: MLPNeuronsConfig, ctx: RunContext) -> RunResult:
    if config.task == "digits":
        split, corner_test = digit_pair(*DIGITS, config.test_share, config.data_seed), None
    else:
        split, corner_test = xor_split(config.xor_per_corner, config.xor_noise, config.data_seed)
    trained = {s: train_mlp(split, config.hidden, config.steps, config.lr, s, config.weight_decay)
               for s in config.seeds}
    y_train = split.y_train.numpy()
    models, selectivity, singles, sweeps, acts_train = [], [], [], [], {}
    for s, t in trained.items():
        models.append({"seed": s, "final_loss": t.final_loss, "train_accuracy": t.train_accuracy,
                       "test_accuracy": t.test_accuracy})
        acts_train[s] = hidden_activations(t.model, split.x_train)                       # (N_train, H)
        sel = class_selectivity(acts_train[s], y_train)
        selectivity.append(sel.assign(seed=s))
        singles.append(single_knockouts(t.model, split.x_test, split.y_test).assign(seed=s))
        sweeps.append(knockout_sweep(t.model, split.x_test, split.y_test, sel.difference.to_numpy(),
                                     config.random_draws, seed=1000 + s).assign(seed=s))
    selectivity, singles = pd.concat(selectivity, ignore_index=True), pd.concat(singles, ignore_index=True)
    tables = {"models": pd.DataFrame(models), "selectivity": selectivity, "single_knockout": singles,
              "knockout_sweep": pd.concat(sweeps, ignore_index=True)}
    tables.update(matching_tables(config, trained, acts_train, y_train, selectivity, split))
    if config.task == "digits":
        tables.update(bar_tables(config, trained, split))
    else:
        tables["corners"] = corner_table(trained, corner_test, split.x_test)
    summary = {"n_train": len(split.y_train), "n_test": len(split.y_test), "n_inputs": split.n_inputs,
               "classes": list(split.classes), "share_class_1_test": float(split.y_test.float().mean())}
    checkpoints = {f"seed_{s}": t.model.state_dict() for s, t in trained.items()}
    # exact weights: the page reads them back as input-weight images and reruns the model on new inputs
    return RunResult(tables=tables, summary=summary, checkpoints=checkpoints, seed=config.seeds[0],
                     half_precision_checkpoints=False)


def matching_tables(config: MLPNeuronsConfig, trained: dict, acts_train: dict, y_train: np.ndarray,
                    selectivity: pd.DataFrame, split) -> dict[str, pd.DataFrame]:
    """Every pair of seeds: matching by activation correlation (overall and within class), and matched knockouts.
    The full correlation matrices are kept for the first pair only (the page draws them)."""
    matches, matched_ko, corr_rows = [], [], []
    for index, (a, b) in enumerate(seed_pairs(config.seeds)):
        corr = correlation_matrix(acts_train[a], acts_train[b])                            # (H, H)
        corr_within = correlation_matrix(within_class(acts_train[a], y_train), within_class(acts_train[b], y_train))
        rows, cols = match_neurons(corr)
        rows_w, cols_w = match_neurons(corr_within)
        partner_within = dict(zip(rows_w, cols_w))
        matches.append(pd.DataFrame({"seed_a": a, "seed_b": b, "neuron_a": rows, "neuron_b": cols,
                                     "corr": corr[rows, cols], "corr_within": corr_within[rows, cols],
                                     "neuron_b_within": [partner_within[r] for r in rows],
                                     "best_corr_within": [corr_within[r, partner_within[r]] for r in rows]}))
        size = {s: np.abs(selectivity[selectivity.seed == s].sort_values("neuron").difference.to_numpy())
                for s in (a, b)}
        order_a, order_b = np.argsort(-size[a], kind="stable"), np.argsort(-size[b], kind="stable")
        partner = np.empty(len(rows), dtype=np.int64)
        partner[rows] = cols
        matched_ko.append(matched_knockouts(trained[a].model, trained[b].model, split.x_test, split.y_test,
                                            order_a, order_b, partner).assign(seed_a=a, seed_b=b))
        if index == 0:
            i, j = np.meshgrid(np.arange(corr.shape[0]), np.arange(corr.shape[1]), indexing="ij")
            corr_rows.append(pd.DataFrame({"seed_a": a, "seed_b": b, "neuron_a": i.ravel(), "neuron_b": j.ravel(),
                                           "corr": corr.ravel(), "corr_within": corr_within.ravel()}))
    return {"matching": pd.concat(matches, ignore_index=True),
            "matched_knockout": pd.concat(matched_ko, ignore_index=True),
            "correlation": pd.concat(corr_rows, ignore_index=True)}


def bar_tables(config: MLPNeuronsConfig, trained: dict, split) -> dict[str, pd.DataFrame]:
    """The top bar (from the training means), each model's predictions along both paths, and for the first seed
    the neurons' changes from a test "1" to the same "1" with the whole bar."""
    x_train, y_train = split.x_train.numpy(), split.y_train.numpy()
    bar = bar_pixels(x_train, y_train, config.bar_rows, config.bar_margin)
    pixels = bar.pixel.to_numpy()
    ones, sevens = split.x_test[split.y_test == 0], split.x_test[split.y_test == 1]      # (N_1, 64), (N_7, 64)
    add = bar_path(ones, pixels, bar.mean_1.to_numpy(), add=True)                         # (N_1, P+1, 64)
    remove = bar_path(sevens, pixels, bar.mean_0.to_numpy(), add=False)                   # (N_7, P+1, 64)
    steps, flips = [], []
    for s, t in trained.items():
        for direction, path, start in (("add bar to 1s", add, 0), ("remove bar from 7s", remove, 1)):
            preds = path_predictions(t.model, path).assign(seed=s, direction=direction)
            steps.append(preds)
            flips.append(pd.DataFrame({"seed": s, "direction": direction, "image": np.arange(len(path)),
                                       "flip_step": flip_steps(preds, start).to_numpy()}))
    first = trained[config.seeds[0]].model
    changes = neuron_changes(first, add[:, 0], add[:, -1]).assign(seed=config.seeds[0])
    with torch.no_grad():
        hidden_path = first.run(add.reshape(-1, add.shape[-1]))[1].reshape(add.shape[0], add.shape[1], -1)
    mean_path = hidden_path.mean(0).numpy()                                                # (P+1, H)
    step, neuron = np.meshgrid(np.arange(mean_path.shape[0]), np.arange(mean_path.shape[1]), indexing="ij")
    neuron_steps = pd.DataFrame({"seed": config.seeds[0], "step": step.ravel(), "neuron": neuron.ravel(),
                                 "mean_activation": mean_path.ravel()})
    return {"bar_pixels": bar, "bar_steps": pd.concat(steps, ignore_index=True),
            "bar_flips": pd.concat(flips, ignore_index=True), "bar_neurons": changes, "bar_neuron_steps": neuron_steps}


def corner_table(trained: dict, corner_test: torch.Tensor, x_test: torch.Tensor) -> pd.DataFrame:
    """Per model and neuron: activation at each exact corner, the mean over that corner's jittered test points,
    the logic function it computes (`labpy.toy.mlp.corner_logic`, stored by name: a CSV reader would turn the
    pattern "0100" into the number 100), and its vote for XOR = 1 (w_out[1] − w_out[0])."""
    exact = torch.tensor(CORNERS, dtype=torch.float32)                                     # (4, 2)
    rows = []
    for s, t in trained.items():
        at_corner = hidden_activations(t.model, exact)                                     # (4, H)
        jittered = hidden_activations(t.model, x_test)                                     # (N_test, H)
        vote = (t.model.w_out.weight[1] - t.model.w_out.weight[0]).detach().numpy()        # (H,)
        logic = corner_logic(t.model, exact)
        for h in range(t.model.n_hidden):
            for c, name in enumerate(CORNER_NAMES):
                rows.append({"seed": s, "neuron": h, "corner": name, "activation": float(at_corner[c, h]),
                             "mean_jittered": float(jittered[corner_test.numpy() == c, h].mean()),
                             "logic": logic[h], "vote_xor": float(vote[h])})
    return pd.DataFrame(rows)


register(Experiment(
    name="mlp_neurons",
    title="Single neurons of a small MLP: class-selective neurons, knockouts, the top bar of a 7, two seeds matched",
    track="Toy models",
    page="experiments/mlp-neurons.qmd",
    version=1,
    config_type=MLPNeuronsConfig,
    scales={
        "smoke": {"digits": MLPNeuronsConfig(hidden=8, steps=20, random_draws=2),
                  "xor": MLPNeuronsConfig(task="xor", hidden=4, steps=20, xor_per_corner=5, random_draws=2)},
        "cpu": {"digits": MLPNeuronsConfig(),
                "xor": MLPNeuronsConfig(task="xor", hidden=8, steps=2000, seeds=(0, 1, 2, 3, 4, 5))},
    },
    run=run,
    description="A 64→32→2 ReLU MLP on 8×8 digits 1 vs 7 and a 2→8→2 one on XOR, several seeds each: neurons "
                "that fire for one class, threshold knockouts, the top bar added pixel by pixel, and neurons "
                "matched across seeds.",
))
