"""Linear probes with control tasks (Hewitt & Liang 2019), fitted with scikit-learn.

A probe's accuracy alone does not say the *representation* encodes a property: a flexible enough probe can
memorise the answer from the token's identity. Hewitt & Liang's control task gives every token *type* a
random label, drawn from the property's own label distribution, and keeps it for every occurrence — a task
only memorisation can solve. **Selectivity** = accuracy on the property − accuracy on its control task: high
when the representation makes the property easy beyond what token identity allows.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def control_labels(token_ids: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """(N,) a control label per token: one random draw per token type from `labels`' empirical distribution."""
    rng = np.random.default_rng(seed)
    values, counts = np.unique(labels, return_counts=True)
    types = np.unique(token_ids)
    per_type = dict(zip(types.tolist(), rng.choice(values, size=len(types), p=counts / counts.sum()).tolist()))
    return np.array([per_type[t] for t in token_ids.tolist()])


def probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   c: float = 0.1, seed: int = 0) -> float:
    """Test accuracy of a standardised, L2-regularised logistic-regression probe. x: (N, d); y: (N,)."""
    if len(np.unique(y_train)) < 2:                          # one class seen: the probe can only say it
        return float((y_test == y_train[0]).mean())
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    probe.fit(x_train, y_train)
    return float(probe.score(x_test, y_test))


def majority_accuracy(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Accuracy of always answering the training set's most common label."""
    values, counts = np.unique(y_train, return_counts=True)
    return float((y_test == values[counts.argmax()]).mean())
