"""What in a draw of jittered XOR points tilts which mirror-image solution most initialisations build.

The XOR network of `mlp_neurons` (2 → hidden → 2, ReLU, full-batch Adam) is trained from `inits`
initialisations at once (`train_many`) on two kinds of training points:
- `shifts`: a draw made exactly mirror-symmetric (the "1,0" cluster is the "0,1" cluster with x1 and x2 swapped;
  "0,0" and "1,1" are half their points plus those points swapped), then the "1,0" cluster moved by each of
  `shifts` along x1 (outward for positive values); `cross_shifts`: the same, moved along x2 (towards "1,1" for
  positive values). The initial weights' distribution does not change when x1 and x2
  swap, so at shift 0 neither mirror image can be favoured but by the draw of initialisations.
- `draws`: `draws` ordinary draws of the points, each with its swap-antisymmetric statistics (`asymmetries`).
- `parts`: each of `draws` ordinary draws as drawn, with one part of it mirrored (the two XOR = 1 clusters, "0,0"
  or "1,1"), and with all of it mirrored: which part of a draw carries its lean.
- `tails`: each of `draws` ordinary draws as drawn and with some of its "1,1" points swapped (x1 and x2
  exchanged): all of them, the `TAIL_SIZES` furthest from the diagonal, the rest, or as many at random
  (`TAIL_VARIANTS`): whether a few points in the cluster's tails tip the lean.
- `lines`: each of `draws` ordinary draws as drawn and with its furthest "1,1" point swapped, followed through
  training (`LINE_STEPS`): when the two runs of one initialisation part, and where the detector on the side of that
  point draws its line.
Stored: per model its test accuracy and which of the four functions of the two mirror pairs ("x1 AND NOT x2" /
"x2 AND NOT x1", "x2" / "x1") one of its hidden neurons computes at the exact corners (`corner_logic`); per draw
its statistics. Test points are each draw's own (`xor_split`), unshifted.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..store import RunResult
from ..tasks.digits import CORNERS, Split, xor_points, xor_split
from ..toy.mlp import MLP, corner_logic, train_many, train_snapshots
from ..validation import check_ranges, number_between, one_of, require
from .registry import Experiment, RunContext, register

TASKS = ("shifts", "cross_shifts", "draws", "parts", "tails", "lines")
FUNCTIONS = ("x1 AND NOT x2", "x2 AND NOT x1", "x2", "x1")     # two mirror pairs: a function, then its mirror
STATISTICS = ("outward", "cross", "corner_00", "corner_11", "spread")
TAIL_SIZES = (1, 3, 10)           # `tails`: how many of the "1,1" points furthest from the diagonal are swapped
TAIL_VARIANTS = ("as drawn", "'1,1' swapped", *(f"{k} furthest swapped" for k in TAIL_SIZES),
                 f"all but the {TAIL_SIZES[-1]} furthest swapped", f"{TAIL_SIZES[-1]} at random swapped")
LINE_VARIANTS = ("as drawn", "1 furthest swapped")
LINE_STEPS = (0, 25, 50, 100, 200, 300, 500, 1000, 1500)   # `lines`: snapshots before the last step (which is added)
PARTS = {"as drawn": (), "XOR = 1 clusters mirrored": ("xor1",), "'0,0' mirrored": ("0,0",),
         "'1,1' mirrored": ("1,1",), "all mirrored": ("xor1", "0,0", "1,1")}


@dataclass(frozen=True)
class XorTiltConfig:
    task: str = "shifts"
    hidden: int = 8
    steps: int = 2000
    lr: float = 0.01
    inits: int = 128                  # initialisations 0 … inits − 1 on every set of points
    xor_per_corner: int = 50          # jittered copies of each corner, in train and in test
    xor_noise: float = 0.1            # standard deviation of the jitter
    data_seed: int = 0                # shifts: the draw made symmetric; draws: the first draw
    draws: int = 40                   # draws: data_seed, data_seed + 1, …
    shifts: tuple[float, ...] = (-0.08, -0.04, -0.02, -0.01, -0.005, 0.0, 0.005, 0.01, 0.02, 0.04, 0.08)

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("hidden", "steps", "inits", "xor_per_corner", "draws"),
                     nonneg_int=("data_seed",), positive=("lr",), nonneg=("xor_noise",), nonempty=("shifts",),
                     rules={"task": one_of(*TASKS), "shifts": number_between(-0.5, 0.5)})
        require(self, self.xor_per_corner % 2 == 0, "xor_per_corner",
                "is out of range; it must be even, so that half of the '0,0' and '1,1' points and their mirror "
                "images make a symmetric cluster (e.g. --set xor_per_corner=50)", hint=False)


def swapped(x: torch.Tensor) -> torch.Tensor:
    """(N, 2) points with x1 and x2 exchanged: the mirror image across the diagonal."""
    return x[:, [1, 0]]


def mirror_symmetric(x: torch.Tensor, corner: torch.Tensor, parts: tuple[str, ...] = ("xor1", "0,0", "1,1")
                     ) -> torch.Tensor:
    """(N, 2) points, corner ids (N,) in `xor_points`' order -> the same layout with `parts` made mirror-symmetric
    (all of them by default): "xor1" makes "1,0" the swap of "0,1"; "0,0" and "1,1" make that cluster its first
    half and the half's swap."""
    out = x.clone()
    for c, name in ((0, "0,0"), (3, "1,1")):
        if name in parts:
            own = x[corner == c]
            half = own[: len(own) // 2]
            out[corner == c] = torch.cat([half, swapped(half)])
    if "xor1" in parts:
        out[corner == 2] = swapped(x[corner == 1])
    return out


def shifted(x: torch.Tensor, corner: torch.Tensor, shift: float, axis: int = 0) -> torch.Tensor:
    """The "1,0" cluster moved by `shift` along x1 (axis 0; positive: away from the other corners) or along x2
    (axis 1; positive: towards "1,1")."""
    out = x.clone()
    out[corner == 2, axis] += shift
    return out


def asymmetries(x: torch.Tensor, corner: torch.Tensor) -> dict[str, float]:
    """Statistics of a set of points that change sign when x1 and x2 swap (0 for a mirror-symmetric set):
    outward — how much further along its own axis the "1,0" cluster's mean lies than the "0,1" cluster's;
    cross — the same across (x2 of "1,0" against x1 of "0,1"); corner_00, corner_11 — a cluster's mean x1 minus its
    mean x2; spread — the "1,0" cluster's standard deviation minus the "0,1" cluster's (each averaged over the two
    coordinates, so a shift leaves it alone)."""
    c = {k: x[corner == k].double() for k in range(4)}
    return {"outward": float(c[2][:, 0].mean() - c[1][:, 1].mean()),
            "cross": float(c[2][:, 1].mean() - c[1][:, 0].mean()),
            "corner_00": float(c[0][:, 0].mean() - c[0][:, 1].mean()),
            "corner_11": float(c[3][:, 0].mean() - c[3][:, 1].mean()),
            "spread": float(c[2].std(0).mean() - c[1].std(0).mean())}


def train_on(point_sets: dict, config: XorTiltConfig) -> pd.DataFrame:
    """Every initialisation on every {key: Split}: one row per model with `key`, `init`, its test accuracy and, per
    function in FUNCTIONS, whether one of its hidden neurons computes it."""
    pairs = [(key, s) for key in point_sets for s in range(config.inits)]
    trained = train_many([point_sets[key] for key, _ in pairs], config.hidden, config.steps, config.lr,
                         [s for _, s in pairs])
    corners = torch.tensor(CORNERS, dtype=torch.float32)                                  # (4, 2)
    rows = []
    for (key, s), t in zip(pairs, trained):
        functions = set(corner_logic(t.model, corners))
        rows.append({"key": key, "init": s, "test_accuracy": t.test_accuracy,
                     **{name: name in functions for name in FUNCTIONS}})
    return pd.DataFrame(rows)


def tail_order(x: torch.Tensor, corner: torch.Tensor) -> torch.Tensor:
    """Indices of the "1,1" points, furthest from the diagonal (largest |x1 − x2|) first: the points that sit
    nearest the line a detector of "1,0" or "0,1" has to draw between them and their own cluster."""
    own = torch.nonzero(corner == 3).squeeze(1)                                         # (per_corner,)
    return own[torch.argsort((x[own, 0] - x[own, 1]).abs(), descending=True, stable=True)]


def tail_asymmetry(x: torch.Tensor, corner: torch.Tensor, k: int = 5) -> float:
    """How much further the "1,1" cluster reaches towards "1,0" than towards "0,1": the mean of its k largest
    x1 − x2 minus the mean of its k largest x2 − x1 (0 for a mirror-symmetric cluster; flips sign when swapped)."""
    d = (x[corner == 3, 0] - x[corner == 3, 1]).double()
    return float(d.topk(k).values.mean() - (-d).topk(k).values.mean())


def swap_points(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """(N, 2) points with the points at indices `which` mirrored across the diagonal (x1 and x2 exchanged)."""
    out = x.clone()
    out[which] = swapped(x[which])
    return out


def tail_variants(x: torch.Tensor, corner: torch.Tensor, draw: int) -> dict[str, torch.Tensor]:
    """The TAIL_VARIANTS of one draw's training points; the random subset is drawn from `draw`, so it is fixed."""
    order = tail_order(x, corner)
    k = TAIL_SIZES[-1]
    pick = torch.randperm(len(order), generator=torch.Generator().manual_seed(draw))[:k]
    subsets = [order[:0], order, *(order[:n] for n in TAIL_SIZES), order[k:], order[pick]]
    return {name: swap_points(x, which) for name, which in zip(TAIL_VARIANTS, subsets)}


def corner_ids(config: XorTiltConfig) -> torch.Tensor:
    """(N,) each training point's corner, 0..3 in `xor_points`' order: the same layout in every draw."""
    return xor_points(config.xor_per_corner, config.xor_noise, 2 * config.data_seed)[2]


def run(config: XorTiltConfig, ctx: RunContext) -> RunResult:
    corner = corner_ids(config)
    if config.task in ("shifts", "cross_shifts"):
        split, _ = xor_split(config.xor_per_corner, config.xor_noise, config.data_seed)
        base = mirror_symmetric(split.x_train, corner)
        axis = 0 if config.task == "shifts" else 1
        sets = {shift: Split(shifted(base, corner, shift, axis), split.y_train, split.x_test, split.y_test,
                             split.classes) for shift in config.shifts}
        name = "shift"
    elif config.task == "parts":
        return parts_run(config)
    elif config.task == "tails":
        return tails_run(config)
    elif config.task == "lines":
        return lines_run(config)
    else:
        sets = {d: xor_split(config.xor_per_corner, config.xor_noise, d)[0]
                for d in range(config.data_seed, config.data_seed + config.draws)}
        name = "draw"
    stats = pd.DataFrame([{name: key, **asymmetries(s.x_train, corner)} for key, s in sets.items()])
    models = train_on(sets, config).rename(columns={"key": name})
    return RunResult(tables={"models": models, "point_sets": stats}, summary={"models": len(models)},
                     seed=config.data_seed)


def parts_run(config: XorTiltConfig) -> RunResult:
    """Every draw with each of PARTS mirrored; tables keyed by draw and variant."""
    sets, keys, corner = {}, {}, corner_ids(config)
    for d in range(config.data_seed, config.data_seed + config.draws):
        split, _ = xor_split(config.xor_per_corner, config.xor_noise, d)
        for variant, parts in PARTS.items():
            key = len(sets)
            keys[key] = {"draw": d, "variant": variant}
            sets[key] = Split(mirror_symmetric(split.x_train, corner, parts), split.y_train, split.x_test,
                              split.y_test, split.classes)
    stats = pd.DataFrame([{**keys[k], **asymmetries(s.x_train, corner)} for k, s in sets.items()])
    trained = train_on(sets, config)
    models = pd.concat([pd.DataFrame([keys[k] for k in trained.key]), trained.drop(columns="key")], axis=1)
    return RunResult(tables={"models": models, "point_sets": stats}, summary={"models": len(models)},
                     seed=config.data_seed)


def tails_run(config: XorTiltConfig) -> RunResult:
    """Every draw with some of its "1,1" points swapped (TAIL_VARIANTS); tables keyed by draw and variant, with the
    "1,1" cluster's tail asymmetry beside the draw's other statistics."""
    sets, keys, stats, corner = {}, {}, [], corner_ids(config)
    for d in range(config.data_seed, config.data_seed + config.draws):
        split, _ = xor_split(config.xor_per_corner, config.xor_noise, d)
        for variant, x in tail_variants(split.x_train, corner, d).items():
            key = len(sets)
            keys[key] = {"draw": d, "variant": variant}
            sets[key] = Split(x, split.y_train, split.x_test, split.y_test, split.classes)
            stats.append({**keys[key], **asymmetries(x, corner), "tail_11": tail_asymmetry(x, corner)})
    trained = train_on(sets, config)
    models = pd.concat([pd.DataFrame([keys[k] for k in trained.key]), trained.drop(columns="key")], axis=1)
    return RunResult(tables={"models": models, "point_sets": pd.DataFrame(stats)}, summary={"models": len(models)},
                     seed=config.data_seed)


def pair_code(first: bool | pd.Series, mirror: bool | pd.Series) -> int | pd.Series:
    """Which of the first mirror pair a model has, as one number (booleans, or boolean columns, in; ints out): 1 for
    "x1 AND NOT x2", 2 for its mirror, 3 both, 0 neither."""
    return first * 1 + mirror * 2


def first_pair_code(model: MLP, corners: torch.Tensor) -> int:
    """`pair_code` of a model's hidden neurons, read at the exact corners."""
    functions = set(corner_logic(model, corners))
    return int(pair_code(FUNCTIONS[0] in functions, FUNCTIONS[1] in functions))


def outlier_reading(model: MLP, x: torch.Tensor, corner: torch.Tensor, outlier: int) -> dict[str, float]:
    """Where the detector on the side of the "1,1" point `outlier` draws its line ("x1 AND NOT x2" when the point's
    x1 − x2 > 0): over the neurons computing it, the point's highest pre-activation and its rank among the "1,1"
    points' (1: the nearest the line of all of them); NaN without such a neuron."""
    side = FUNCTIONS[0] if x[outlier, 0] > x[outlier, 1] else FUNCTIONS[1]
    functions = corner_logic(model, torch.tensor(CORNERS, dtype=torch.float32))
    which = [h for h, name in enumerate(functions) if name == side]
    if not which:
        return {"outlier_pre": float("nan"), "outlier_rank": float("nan")}
    with torch.no_grad():
        pre = model.pre(x)[:, which]                                                     # (N, detectors)
    ones = torch.nonzero(corner == 3).squeeze(1)
    ranks = (pre[ones] > pre[outlier]).sum(0) + 1                                        # (detectors,)
    best = int(pre[outlier].argmax())
    return {"outlier_pre": float(pre[outlier, best]), "outlier_rank": float(ranks.min())}


def lines_run(config: XorTiltConfig) -> RunResult:
    """Every draw as drawn and with its furthest "1,1" point swapped, snapshots at LINE_STEPS and the last step: per
    model and snapshot the first pair's code (`first_pair_code`) and the training accuracy; at the end its test
    accuracy and `outlier_reading`."""
    corner = corner_ids(config)
    corners = torch.tensor(CORNERS, dtype=torch.float32)
    steps = tuple(k for k in LINE_STEPS if k < config.steps) + (config.steps,)
    sets, keys = [], []
    for d in range(config.data_seed, config.data_seed + config.draws):
        split, _ = xor_split(config.xor_per_corner, config.xor_noise, d)
        outlier = int(tail_order(split.x_train, corner)[0])
        variants = tail_variants(split.x_train, corner, d)
        for variant in LINE_VARIANTS:
            for s in range(config.inits):
                sets.append(Split(variants[variant], split.y_train, split.x_test, split.y_test, split.classes))
                keys.append({"draw": d, "variant": variant, "init": s, "outlier": outlier})
    snapshots = train_snapshots(sets, config.hidden, config.lr, [k["init"] for k in keys], steps)
    rows = []
    for i, (key, split) in enumerate(zip(keys, sets)):
        final = snapshots[config.steps][i]
        with torch.no_grad():
            test_accuracy = float((final(split.x_test).argmax(1) == split.y_test).float().mean())
        row = {**key, "test_accuracy": test_accuracy, **outlier_reading(final, split.x_train, corner, key["outlier"])}
        for k in steps:
            model = snapshots[k][i]
            with torch.no_grad():
                row[f"train_accuracy_{k}"] = float((model(split.x_train).argmax(1) == split.y_train).float().mean())
            row[f"code_{k}"] = first_pair_code(model, corners)
        rows.append(row)
    return RunResult(tables={"models": pd.DataFrame(rows)}, summary={"models": len(rows)}, seed=config.data_seed)


register(Experiment(
    name="xor_draw_tilt",
    title="What tilts the XOR solutions: mirror-symmetric points shifted by a little, and forty ordinary draws",
    track="Toy models",
    page="experiments/mlp-neurons.qmd",
    version=1,
    config_type=XorTiltConfig,
    scales={
        "smoke": {"shifts": XorTiltConfig(hidden=4, steps=20, inits=3, xor_per_corner=6, shifts=(-0.02, 0.0, 0.02)),
                  "cross_shifts": XorTiltConfig(task="cross_shifts", hidden=4, steps=20, inits=3, xor_per_corner=6,
                                                shifts=(-0.02, 0.0, 0.02)),
                  "draws": XorTiltConfig(task="draws", hidden=4, steps=20, inits=3, xor_per_corner=6, draws=2),
                  "parts": XorTiltConfig(task="parts", hidden=4, steps=20, inits=3, xor_per_corner=6, draws=2),
                  "tails": XorTiltConfig(task="tails", hidden=4, steps=20, inits=3, xor_per_corner=24, draws=2),
                  "lines": XorTiltConfig(task="lines", hidden=4, steps=20, inits=3, xor_per_corner=24, draws=2)},
        "cpu": {"shifts": XorTiltConfig(), "cross_shifts": XorTiltConfig(task="cross_shifts"),
                "draws": XorTiltConfig(task="draws", inits=64),
                "parts": XorTiltConfig(task="parts", inits=64, draws=8),
                "tails": XorTiltConfig(task="tails", inits=64, draws=16),
                "lines": XorTiltConfig(task="lines", inits=64, draws=16)},
    },
    run=run,
    description="The 2→8→2 XOR MLP from 128 initialisations on mirror-symmetric points with the '1,0' cluster moved "
                "by −0.08 to 0.08 along x1 or x2, and from 64 on each of 40 ordinary draws, of 8 draws with one "
                "part mirrored and of 16 draws with some '1,1' points swapped (followed through training for the "
                "furthest one): which mirror-image solution wins, and when.",
))
