"""Two tiny classification tasks for looking at single neurons: digits "1" against "7", and XOR.

Digits: scikit-learn's bundled 8×8 handwritten digits (1,797 images, shipped inside the package, so nothing is
downloaded), keeping the two classes the user's notebook compared on MNIST. 784-pixel MNIST is not available
offline; 8×8 images keep the question (a "7" is a "1" with a bar on top?) with 64 input pixels. Pixels are
scaled from 0..16 to [0, 1] and split into train and test once, stratified, by a seed.

XOR: the four corners of the unit square labelled x1 XOR x2, each repeated with a little Gaussian jitter so
that neurons' activations vary within a corner (a correlation over four distinct points says little).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SIDE = 8                                          # digits are SIDE × SIDE pixels
CORNERS = ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0))
CORNER_NAMES = ("0,0", "0,1", "1,0", "1,1")       # x1 then x2 (not "01": a CSV reader makes that 1)


@dataclass(frozen=True)
class Split:
    """A labelled train/test split; `classes[k]` names label k (e.g. ("1", "7"))."""

    x_train: torch.Tensor          # (N_train, D) float32
    y_train: torch.Tensor          # (N_train,) long, the index of the class in `classes`
    x_test: torch.Tensor           # (N_test, D)
    y_test: torch.Tensor           # (N_test,)
    classes: tuple[str, ...]       # two for the pairs and XOR, ten for `all_digits`

    @property
    def n_inputs(self) -> int:
        return self.x_train.shape[1]


def digit_pair(a: int = 1, b: int = 7, test_share: float = 0.3, seed: int = 0) -> Split:
    """Images of digit `a` (label 0) and digit `b` (label 1), pixels in [0, 1], stratified split by `seed`."""
    digits = load_digits()
    keep = np.isin(digits.target, (a, b))
    x = digits.data[keep].astype(np.float32) / 16.0                 # (N, 64)
    y = (digits.target[keep] == b).astype(np.int64)                  # (N,)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_share, stratify=y, random_state=seed)
    return Split(torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te),
                 (str(a), str(b)))


def all_digits(test_share: float = 0.3, seed: int = 0) -> Split:
    """Every image, labelled with its digit (0–9), scaled as `digit_pair` scales them, stratified split by `seed`."""
    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0                        # (N, 64)
    y = digits.target.astype(np.int64)                                # (N,)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_share, stratify=y, random_state=seed)
    return Split(torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te),
                 tuple(str(d) for d in range(10)))


def other_digits(exclude: tuple[int, ...] = (1, 7)) -> tuple[torch.Tensor, np.ndarray]:
    """Every image of the digits not in `exclude`, scaled as `digit_pair` scales them: (N, 64) in [0, 1], and each
    image's digit (N,). What a two-class network says about inputs it was never trained to tell apart."""
    digits = load_digits()
    keep = ~np.isin(digits.target, exclude)
    return torch.from_numpy(digits.data[keep].astype(np.float32) / 16.0), digits.target[keep]


def xor_points(per_corner: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`per_corner` jittered copies of each corner: inputs (4·per_corner, 2), XOR labels, and corner ids (0..3)."""
    rng = np.random.default_rng(seed)
    corner = np.repeat(np.arange(4), per_corner)                    # (N,)
    x = np.asarray(CORNERS, dtype=np.float32)[corner]                # (N, 2)
    x = x + noise * rng.standard_normal(x.shape).astype(np.float32)
    y = (np.asarray(CORNERS)[corner].sum(1) == 1).astype(np.int64)  # XOR: exactly one coordinate is 1
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(corner)


def xor_split(per_corner: int = 50, noise: float = 0.1, seed: int = 0) -> tuple[Split, torch.Tensor]:
    """Train (draws from 2·seed) and test (2·seed + 1) XOR points, never sharing draws; also the test corner ids."""
    x_tr, y_tr, _ = xor_points(per_corner, noise, 2 * seed)
    x_te, y_te, corner_te = xor_points(per_corner, noise, 2 * seed + 1)
    return Split(x_tr, y_tr, x_te, y_te, ("0", "1")), corner_te
