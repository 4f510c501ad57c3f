"""A one-hidden-layer ReLU MLP small enough to read neuron by neuron, its training, and the analyses of the
`mlp_neurons` experiment: class selectivity, knockouts, the "add the top bar" path, and matching two seeds.

The model is plain PyTorch on purpose: with one hidden layer, "a neuron" is one row of `w_in` (its input
weights), one ReLU, and one column of `w_out` (its votes for each class), and a knockout is a 0/1 mask on
the hidden activations. Everything here runs in well under a second on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from scipy.stats import spearmanr
from torch import nn

from ..device import one_thread
from ..tasks.digits import Split


class MLP(nn.Module):
    """x (N, n_in) -> hidden = ReLU(w_in x + b_in) (N, H) -> logits = w_out hidden + b_out (N, n_out).

    `negative_slope` > 0 makes the ReLU leaky (below zero a neuron passes slope × its pre-activation, so it
    still gets a gradient); the initial weights do not depend on it."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int = 2, negative_slope: float = 0.0) -> None:
        super().__init__()
        self.w_in = nn.Linear(n_in, n_hidden)        # weight (H, n_in): row h is neuron h's input weights
        self.w_out = nn.Linear(n_hidden, n_out)      # weight (n_out, H): column h is neuron h's votes
        self.negative_slope = negative_slope

    @property
    def n_hidden(self) -> int:
        return self.w_in.out_features

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations (N, H): linear in x, so a change of input dx moves them by exactly dx @ w_in.T."""
        return self.w_in(x)

    def run(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, n_out), hidden (N, H)); `keep` (H,) of 0/1 zeroes knocked-out neurons' activations."""
        hidden = F.leaky_relu(self.pre(x), self.negative_slope)    # (N, H); plain ReLU at slope 0
        if keep is not None:
            hidden = hidden * keep
        return self.w_out(hidden), hidden

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.run(x, keep)[0]


def mlp_from_state(state: dict[str, torch.Tensor]) -> MLP:
    """Rebuild a stored model (shapes read off the weights) for a page's live analysis."""
    n_hidden, n_in = state["w_in.weight"].shape
    model = MLP(n_in, n_hidden, state["w_out.weight"].shape[0])
    model.load_state_dict(state)
    return model.eval()


@dataclass(frozen=True)
class Trained:
    model: MLP
    final_loss: float
    train_accuracy: float
    test_accuracy: float


def initial_model(n_in: int, n_hidden: int, seed: int, n_out: int = 2) -> MLP:
    """The untrained model a seed starts from (PyTorch's default init), without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP(n_in, n_hidden, n_out)


def _accuracy(model: MLP, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def train_mlp(split: Split, n_hidden: int, steps: int, lr: float, seed: int, weight_decay: float = 0.0) -> Trained:
    """Full-batch Adam on cross-entropy from a seeded initialisation: the same seed gives the same weights.

    Full batch (a few hundred examples) removes batch-order randomness, so the seed only picks the
    initialisation — exactly what "two seeds of one architecture" should vary.
    """
    with one_thread():
        model = initial_model(split.n_inputs, n_hidden, seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            loss = F.cross_entropy(model(split.x_train), split.y_train)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            final = F.cross_entropy(model(split.x_train), split.y_train).item()
        return Trained(model, final, _accuracy(model, split.x_train, split.y_train),
                       _accuracy(model, split.x_test, split.y_test))


class _StackedMLPs:
    """M models of one shape as stacked parameters, model k from `initial_model(…, seeds[k])` with `splits[k]`'s
    training points: w_in (M, H, n_in), b_in (M, H), w_out (M, n_out, H), b_out (M, n_out), and with `front` a
    learned linear layer before w_in: (M, n_in, n_in) started at the identity, (M, n_in) at zero."""

    def __init__(self, splits: list[Split], n_hidden: int, seeds: list[int], negative_slope: float,
                 front: bool = False) -> None:
        if len(splits) != len(seeds):
            raise ValueError(f"{len(splits)} splits and {len(seeds)} seeds: give one split per seed")
        inits = [initial_model(splits[0].n_inputs, n_hidden, s, len(splits[0].classes)) for s in seeds]
        self.params = [nn.Parameter(torch.stack([getattr(getattr(m, layer), kind).detach() for m in inits]))
                       for layer in ("w_in", "w_out") for kind in ("weight", "bias")]
        if front:   # a learned linear layer before w_in, started at the identity: the same model until it learns
            n_in = splits[0].n_inputs
            self.params += [nn.Parameter(torch.eye(n_in).repeat(len(seeds), 1, 1)),      # (M, n_in, n_in)
                            nn.Parameter(torch.zeros(len(seeds), n_in))]                  # (M, n_in)
        self.splits, self.n_hidden, self.negative_slope, self.front = splits, n_hidden, negative_slope, front
        self.x = torch.stack([sp.x_train for sp in splits])                  # (M, N, n_in)
        self.y = torch.stack([sp.y_train for sp in splits])                  # (M, N)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """(M, N, n_in) inputs -> (M, N, H) pre-activations of the hidden layer, through the front layer if any."""
        w_in, b_in = self.params[0], self.params[1]
        if self.front:
            x = torch.baddbmm(self.params[5].unsqueeze(1), x, self.params[4].transpose(1, 2))
        return torch.baddbmm(b_in.unsqueeze(1), x, w_in.transpose(1, 2))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(M, N, n_in) -> (M, N, n_out)."""
        w_out, b_out = self.params[2], self.params[3]
        hidden = F.leaky_relu(self.pre(x), self.negative_slope)
        return torch.baddbmm(b_out.unsqueeze(1), hidden, w_out.transpose(1, 2))

    def losses(self) -> torch.Tensor:
        """(M,) each model's mean cross-entropy on its own training points."""
        return F.cross_entropy(self.logits(self.x).transpose(1, 2), self.y, reduction="none").mean(1)

    def models(self) -> list[MLP]:
        """The M models as they stand, each an `MLP` of its own (copies, in eval mode)."""
        if self.front:
            raise ValueError("models with a front layer are not `MLP`s; read them through pre() and logits()")
        w_in, b_in, w_out, b_out = (p.detach().clone() for p in self.params)
        out = []
        for k, sp in enumerate(self.splits):
            model = MLP(sp.n_inputs, self.n_hidden, w_out.shape[1], self.negative_slope)
            model.load_state_dict({"w_in.weight": w_in[k], "w_in.bias": b_in[k], "w_out.weight": w_out[k],
                                   "w_out.bias": b_out[k]})
            out.append(model.eval())
        return out


def _train_stacked(stack: _StackedMLPs, steps: int, lr: float, warmup_steps: int, optimizer: str,
                   eps: float) -> Iterator[int]:
    """Full-batch training of every model at once; yields the number of steps taken, from 0 (before any) to
    `steps`. The summed loss gives each model its own gradient, and Adam's and SGD's updates are per parameter."""
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer {optimizer!r}: use 'adam' or 'sgd'")
    opt = (torch.optim.AdamW(stack.params, lr=lr, weight_decay=0.0, eps=eps) if optimizer == "adam"
           else torch.optim.SGD(stack.params, lr=lr))
    yield 0
    for step in range(steps):
        if warmup_steps:
            opt.param_groups[0]["lr"] = lr * min(1.0, (step + 1) / warmup_steps)
        loss = stack.losses().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        yield step + 1


def train_many(splits: list[Split], n_hidden: int, steps: int, lr: float, seeds: list[int],
               negative_slope: float = 0.0, warmup_steps: int = 0, optimizer: str = "adam",
               eps: float = 1e-8) -> list[Trained]:
    """`train_mlp` for many (split, seed) pairs at once: model k starts from `initial_model(…, seeds[k])` and
    trains on `splits[k]` (all splits the same size); `negative_slope` as in `MLP`; `warmup_steps` > 0 raises
    the rate linearly from lr / warmup_steps at the first step to `lr` at step `warmup_steps`; `optimizer` "sgd"
    takes plain gradient steps instead of Adam's (each weight moves in proportion to its own gradient); `eps` is
    Adam's ε (PyTorch's default 1e-8).

    Why: a 2 → 8 → 2 XOR model spends its second in Python overhead, not arithmetic, so hundreds of them train
    in one batched loop in about the time of a few. Model k follows `train_mlp`'s trajectory up to the order of
    floating-point sums (`tests/test_mlp_neurons.py` checks it)."""
    with one_thread():
        stack = _StackedMLPs(splits, n_hidden, seeds, negative_slope)
        for _ in _train_stacked(stack, steps, lr, warmup_steps, optimizer, eps):
            pass
        with torch.no_grad():
            final = stack.losses()
        return [Trained(model, float(final[k]), _accuracy(model, sp.x_train, sp.y_train),
                        _accuracy(model, sp.x_test, sp.y_test))
                for k, (model, sp) in enumerate(zip(stack.models(), splits))]


def train_snapshots(splits: list[Split], n_hidden: int, lr: float, seeds: list[int], at_steps: Iterable[int],
                    negative_slope: float = 0.0, warmup_steps: int = 0, optimizer: str = "adam",
                    eps: float = 1e-8) -> dict[int, list[MLP]]:
    """`train_many`'s models after each step count in `at_steps` (0: the initialisation), from one run: the
    models after k steps of a longer run are those of a k-step run, so following neurons step by step needs
    no run per step."""
    wanted = set(at_steps)
    with one_thread():
        stack = _StackedMLPs(splits, n_hidden, seeds, negative_slope)
        return {k: stack.models() for k in _train_stacked(stack, max(wanted), lr, warmup_steps, optimizer, eps)
                if k in wanted}


def dead_over_training(splits: list[Split], n_hidden: int, lr: float, seeds: list[int], at_steps: Iterable[int],
                       front: bool = False) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Train like `train_many` (Adam, full batch), optionally with a learned linear layer in front of the hidden one
    (started at the identity, so both start as the same model); return each step count's dead masks (M, H) — a
    neuron is dead when its pre-activation is above 0 on none of its model's training points — and the final test
    accuracies (M,).

    Why the front layer: a dead neuron of `MLP` reads fixed pixels, so nothing can move its input back above zero;
    in front of a learned layer its input keeps moving while the other neurons learn."""
    wanted = set(at_steps)
    x_test = torch.stack([sp.x_test for sp in splits])                     # (M, N_test, n_in)
    y_test = torch.stack([sp.y_test for sp in splits])                     # (M, N_test)
    with one_thread():
        stack = _StackedMLPs(splits, n_hidden, seeds, 0.0, front=front)
        masks = {}
        for k in _train_stacked(stack, max(wanted), lr, 0, "adam", 1e-8):
            if k in wanted:
                with torch.no_grad():
                    masks[k] = ((stack.pre(stack.x) > 0).sum(1) == 0).numpy()             # (M, H)
        with torch.no_grad():
            accuracy = (stack.logits(x_test).argmax(-1) == y_test).float().mean(1).numpy()
    return masks, accuracy


@torch.no_grad()
def hidden_activations(model: MLP, x: torch.Tensor) -> np.ndarray:
    """(N, H) post-ReLU activations."""
    return model.run(x)[1].numpy()


def class_selectivity(acts: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """Per neuron: mean activation on each class, their difference, and how often it fires on each class.

    acts (N, H), y (N,) in {0, 1}. `difference` = mean_1 − mean_0 (positive: fires more for class 1);
    `index` = difference / (mean_1 + mean_0) in [−1, 1] (±1: fires for one class only, on average; 0 for a
    neuron that never fires); `active_k` = share of class-k inputs with activation > 0.
    """
    m0, m1 = acts[y == 0].mean(0), acts[y == 1].mean(0)          # (H,)
    total = m0 + m1
    index = np.divide(m1 - m0, total, out=np.zeros_like(total), where=total > 0)
    return pd.DataFrame({"neuron": np.arange(acts.shape[1]), "mean_0": m0, "mean_1": m1, "difference": m1 - m0,
                         "index": index, "active_0": (acts[y == 0] > 0).mean(0),
                         "active_1": (acts[y == 1] > 0).mean(0)})


def exclusive_neurons(selectivity: pd.DataFrame, on: float = 0.9, off: float = 0.1) -> pd.DataFrame:
    """Neurons that fire for one class and not the other: active on >= `on` of one class, <= `off` of the other.
    Adds `fires_for` (0 or 1)."""
    for_1 = (selectivity.active_1 >= on) & (selectivity.active_0 <= off)
    for_0 = (selectivity.active_0 >= on) & (selectivity.active_1 <= off)
    return selectivity[for_0 | for_1].assign(fires_for=np.where(for_1[for_0 | for_1], 1, 0))


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) logit of the true class minus the other's (two classes): > 0 when the prediction is right."""
    true = logits.gather(1, y[:, None])[:, 0]
    return true - logits.gather(1, (1 - y)[:, None])[:, 0]


@torch.no_grad()
def knockout_effect(model: MLP, x: torch.Tensor, y: torch.Tensor, knocked: list[int] | np.ndarray) -> dict[str, float]:
    """Zero the activations of `knocked` neurons: accuracy, share of predictions that change from the intact
    model's ("flipped"), and the mean margin and its drop from the intact model's."""
    keep = torch.ones(model.n_hidden)
    keep[torch.from_numpy(np.array(knocked, dtype=np.int64))] = 0.0
    intact, ablated = model(x), model(x, keep)                      # (N, 2) each
    return {"accuracy": (ablated.argmax(-1) == y).float().mean().item(),
            "flipped": (ablated.argmax(-1) != intact.argmax(-1)).float().mean().item(),
            "margin": margins(ablated, y).mean().item(),
            "margin_drop": (margins(intact, y) - margins(ablated, y)).mean().item()}


def single_knockouts(model: MLP, x: torch.Tensor, y: torch.Tensor) -> pd.DataFrame:
    """One row per neuron: the effect of knocking out that neuron alone."""
    return pd.DataFrame([{"neuron": h, **knockout_effect(model, x, y, [h])} for h in range(model.n_hidden)])


def knockout_sweep(model: MLP, x: torch.Tensor, y: torch.Tensor, difference: np.ndarray, random_draws: int,
                   seed: int) -> pd.DataFrame:
    """Knock out every neuron whose |class difference| is at least a threshold, for each threshold that changes
    the set (k = 0..H neurons out), beside two controls with the same number k: the k smallest differences, and
    k random neurons (mean over `random_draws` draws).

    Rows: ranking, k, threshold (for the largest-first ranking: the smallest |difference| knocked out; NaN at
    k = 0 and for the controls), accuracy, flipped, margin, margin_drop.
    """
    size = np.abs(difference)                                                   # (H,)
    largest = np.argsort(-size, kind="stable")
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(model.n_hidden + 1):
        rows.append({"ranking": "largest difference first", "k": k,
                     "threshold": float(size[largest[k - 1]]) if k else np.nan,
                     **knockout_effect(model, x, y, largest[:k])})
        rows.append({"ranking": "smallest difference first", "k": k, "threshold": np.nan,
                     **knockout_effect(model, x, y, largest[::-1][:k])})
        draws = [knockout_effect(model, x, y, rng.choice(model.n_hidden, k, replace=False))
                 for _ in range(random_draws)]
        rows.append({"ranking": "random", "k": k, "threshold": np.nan,
                     **{m: float(np.mean([d[m] for d in draws])) for m in draws[0]}})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the "add the top bar" path (digits)

def _class_means(x: np.ndarray, y: np.ndarray, side: int) -> pd.DataFrame:
    """One row per pixel: its place, the mean class-0 and class-1 images there and their difference (1 − 0)."""
    mean_0, mean_1 = x[y == 0].mean(0), x[y == 1].mean(0)                      # (side²,)
    pixel = np.arange(side * side)
    return pd.DataFrame({"pixel": pixel, "row": pixel // side, "col": pixel % side, "mean_0": mean_0,
                         "mean_1": mean_1, "difference": mean_1 - mean_0})


def bar_pixels(x: np.ndarray, y: np.ndarray, rows: int, margin: float, side: int = 8) -> pd.DataFrame:
    """The "top bar": pixels in the top `rows` rows where the mean class-1 image ("7") exceeds the mean
    class-0 image ("1") by more than `margin`, largest difference first. x (N, side²) in [0, 1]."""
    frame = _class_means(x, y, side)
    frame = frame[(frame.row < rows) & (frame.difference > margin)]
    return frame.sort_values("difference", ascending=False, kind="stable").reset_index(drop=True)


def stroke_pixels(x: np.ndarray, y: np.ndarray, margin: float, side: int = 8) -> pd.DataFrame:
    """The class-0 "stroke": pixels anywhere where the mean class-0 image ("1") exceeds the mean class-1 image ("7")
    by more than `margin`, largest difference first (`bar_pixels`' columns; `difference` is then negative)."""
    frame = _class_means(x, y, side)
    frame = frame[frame.difference < -margin]
    return frame.sort_values("difference", kind="stable").reset_index(drop=True)


def bar_path(images: torch.Tensor, pixels: np.ndarray, targets: np.ndarray, add: bool) -> torch.Tensor:
    """The images after 0, 1, ..., P bar pixels have been changed, in order: (N, P+1, D).

    Adding sets pixel p to max(x_p, target_p) (ink is only added: the "7" template's value); removing sets it to
    min(x_p, target_p) (ink is only taken away, down to the "1" template's value).
    """
    steps = [images.clone()]                                                   # each (N, D)
    for p, target in zip(pixels, targets):
        x = steps[-1].clone()
        x[:, p] = torch.clamp(x[:, p], min=float(target)) if add else torch.clamp(x[:, p], max=float(target))
        steps.append(x)
    return torch.stack(steps, dim=1)


@torch.no_grad()
def path_predictions(model: MLP, path: torch.Tensor) -> pd.DataFrame:
    """Per image and step of a path (N, S, D): P(class 1) and the predicted class."""
    n, s, d = path.shape
    probs = model(path.reshape(n * s, d)).softmax(-1)[:, 1].reshape(n, s)    # (N, S)
    image, step = np.meshgrid(np.arange(n), np.arange(s), indexing="ij")
    return pd.DataFrame({"image": image.ravel(), "step": step.ravel(), "p_1": probs.numpy().ravel(),
                         "predicted": (probs.numpy().ravel() > 0.5).astype(int)})


def flip_steps(predictions: pd.DataFrame, start_class: int) -> pd.Series:
    """Per image, the first step whose prediction is not `start_class` (NaN: never flips)."""
    flipped = predictions[predictions.predicted != start_class]
    first = flipped.groupby("image").step.min()
    return first.reindex(sorted(predictions.image.unique()))


STATES = ("stays active", "stays off", "switches on", "switches off")


@torch.no_grad()
def neuron_changes(model: MLP, start: torch.Tensor, end: torch.Tensor) -> pd.DataFrame:
    """Per (image, neuron): activation change from `start` to `end` (N, D) and its first-order account.

    The pre-activation is linear in the input, so its change is exactly Σ_p W[neuron, p]·Δx_p (`first_order`).
    A neuron active at both ends changes its activation by exactly that; one off at both ends does not change;
    one that switches changes by less than |first_order| (ReLU never amplifies a change).
    """
    pre_0, pre_1 = model.pre(start), model.pre(end)                            # (N, H) each
    first_order = (end - start) @ model.w_in.weight.T                          # (N, H)
    on_0, on_1 = (pre_0 > 0).numpy(), (pre_1 > 0).numpy()
    state = np.select([on_0 & on_1, ~on_0 & ~on_1, ~on_0 & on_1], STATES[:3], STATES[3])
    n, h = pre_0.shape
    image, neuron = np.meshgrid(np.arange(n), np.arange(h), indexing="ij")
    return pd.DataFrame({"image": image.ravel(), "neuron": neuron.ravel(),
                         "act_start": F.relu(pre_0).numpy().ravel(), "act_end": F.relu(pre_1).numpy().ravel(),
                         "d_act": (F.relu(pre_1) - F.relu(pre_0)).numpy().ravel(),
                         "d_pre": (pre_1 - pre_0).numpy().ravel(), "first_order": first_order.numpy().ravel(),
                         "state": state.ravel()})


# ---------------------------------------------------------------- matching the neurons of two models

def correlation_matrix(acts_a: np.ndarray, acts_b: np.ndarray) -> np.ndarray:
    """(H_a, H_b) Pearson correlation of every neuron of A with every neuron of B over the same inputs;
    0 where a neuron is constant (a dead neuron correlates with nothing)."""
    za, zb = acts_a - acts_a.mean(0), acts_b - acts_b.mean(0)                  # (N, H_a), (N, H_b)
    na, nb = np.linalg.norm(za, axis=0), np.linalg.norm(zb, axis=0)
    cov = za.T @ zb                                                            # (H_a, H_b)
    scale = np.outer(na, nb)
    return np.divide(cov, scale, out=np.zeros_like(cov), where=scale > 1e-12 * max(float(scale.max()), 1e-30))


def within_class(acts: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Activations minus their class mean (N, H): what a neuron does beyond telling the classes apart."""
    out = acts.astype(np.float64).copy()
    for c in np.unique(y):
        out[y == c] -= out[y == c].mean(0)
    return out


def match_neurons(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one pairing of A's and B's neurons with the largest total correlation (Hungarian method):
    (neurons of A, their partners in B)."""
    rows, cols = linear_sum_assignment(corr, maximize=True)
    return rows, cols


def matched_knockouts(model_a: MLP, model_b: MLP, x: torch.Tensor, y: torch.Tensor, order_a: np.ndarray,
                      order_b: np.ndarray, partner: np.ndarray) -> pd.DataFrame:
    """For k = 1..H: knock out A's first k neurons of `order_a`, their matched partners in B (`partner[a]`),
    and B's own first k of `order_b`; flipped share and margin drop of each."""
    rows = []
    for k in range(1, model_a.n_hidden + 1):
        a = knockout_effect(model_a, x, y, order_a[:k])
        b_matched = knockout_effect(model_b, x, y, partner[order_a[:k]])
        b_own = knockout_effect(model_b, x, y, order_b[:k])
        rows.append({"k": k, "flipped_a": a["flipped"], "flipped_b_matched": b_matched["flipped"],
                     "flipped_b_own": b_own["flipped"], "margin_drop_a": a["margin_drop"],
                     "margin_drop_b_matched": b_matched["margin_drop"], "margin_drop_b_own": b_own["margin_drop"]})
    return pd.DataFrame(rows)


def seed_pairs(seeds: tuple[int, ...]) -> list[tuple[int, int]]:
    return list(combinations(seeds, 2))


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ (NaN when either side is constant)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


# ---------------------------------------------------------------- XOR: which logic function each neuron computes

LOGIC = {  # active at corners (00, 01, 10, 11) -> name; a ReLU is on in a half-plane, so never XOR or XNOR
    "0000": "dead", "0001": "x1 AND x2", "0010": "x1 AND NOT x2", "0011": "x1", "0100": "x2 AND NOT x1",
    "0101": "x2", "0110": "x1 XOR x2", "0111": "x1 OR x2", "1000": "NOR", "1001": "XNOR", "1010": "NOT x2",
    "1011": "x1 OR NOT x2", "1100": "NOT x1", "1101": "x2 OR NOT x1", "1110": "NAND", "1111": "always on",
}


def logic_pattern(corner_acts: np.ndarray, relative: float = 0.1) -> str:
    """"0111" etc.: a neuron counts as on at a corner when its activation there exceeds `relative` × its
    largest corner activation (and that is > 0). corner_acts (4,) at 00, 01, 10, 11."""
    top = float(np.max(corner_acts))
    if top <= 0:
        return "0000"
    return "".join("1" if a > relative * top else "0" for a in corner_acts)


def corner_logic(model: MLP, corners: torch.Tensor) -> list[str]:
    """Each hidden neuron's logic function (`LOGIC`'s names), read at the exact corners (4, 2) in the order
    00, 01, 10, 11 with `logic_pattern`'s rule."""
    acts = hidden_activations(model, corners)                                    # (4, H)
    return [LOGIC[logic_pattern(acts[:, h])] for h in range(acts.shape[1])]


def boundary_segment(w: np.ndarray, b: float, low: float, high: float) -> np.ndarray:
    """Where a 2-input neuron switches on: the part of the line w·x + b = 0 inside the square [low, high]²,
    as its two end points (2, 2); empty (0, 2) when the line misses the square."""
    points = []
    for axis in (0, 1):                       # crossings of the edges x_axis = low and x_axis = high
        other = 1 - axis
        if abs(w[other]) < 1e-12:
            continue
        for edge in (low, high):
            value = -(b + w[axis] * edge) / w[other]
            if low - 1e-9 <= value <= high + 1e-9:
                point = [0.0, 0.0]
                point[axis], point[other] = edge, value
                points.append(point)
    unique = np.unique(np.round(np.asarray(points, dtype=np.float64).reshape(-1, 2), 9), axis=0)
    return unique[[0, -1]] if len(unique) >= 2 else np.empty((0, 2))
