"""What a real language model's residual stream encodes about Python source, layer by layer: linear probes
with control tasks, and PCA.

Run (one entry per model): windows of held-out stdlib source, each token labelled from Python's own
tokenizer (`labpy.tasks.code_labels`: inside a string, inside a comment, bracket depth, has a digit, starts
with a capital, position bucket). The stream after every block (and the embedding) feeds one logistic-regression
probe per property, trained on 70% of the windows and scored on the rest, beside the same probe on a
Hewitt & Liang control task (`labpy.interp.probes`) and the majority-class baseline. Position 0 is left out
(in a model with an attention sink its stream is a different object). The embedding, middle and last
streams are also standardised and projected on their first two principal components, to colour by property on the page.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from ..interp.hf_hooks import run_with_cache
from ..interp.probes import control_labels, majority_accuracy, probe_accuracy
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.code_labels import PROPERTIES, labelled_windows
from ..validation import check_ranges, one_of, require
from .registry import Experiment, RunContext, register

MODELS = ("smollm2-135m", "lab-lm", "lab-lm:smoke")
TRAIN_SHARE = 0.7
CHUNK = 8                     # windows per forward pass


@dataclass(frozen=True)
class ProbesConfig:
    model: str = "smollm2-135m"
    n_windows: int = 48
    seq_len: int = 64
    c: float = 0.1            # inverse L2 strength of every probe (the same for property and control)
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len"), nonneg_int=("seed",), positive=("c",),
                     rules={"model": one_of(*MODELS)})
        require(self, 0 < int(TRAIN_SHARE * self.n_windows) < self.n_windows, "n_windows",
                f"is out of range; {TRAIN_SHARE:.0%} of the windows train the probes and the rest test them, so "
                f"it needs at least 2 (e.g. --set n_windows=48)", hint=False)


@torch.no_grad()
def streams(model, tokens: torch.Tensor) -> np.ndarray:
    """(L+1, N, T, d) float32: the embedding, then the stream after each block."""
    n_layers = model.config.num_hidden_layers
    names = ["hook_embed"] + [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
    chunks = []
    for start in range(0, len(tokens), CHUNK):
        _, cache = run_with_cache(model, tokens[start:start + CHUNK], names)
        chunks.append(torch.stack([cache[n] for n in names]))                       # (L+1, chunk, T, d)
    return torch.cat(chunks, dim=1).float().numpy()


def run(config: ProbesConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)
    data = labelled_windows(tokenizer, config.n_windows, config.seq_len)
    labels = data.labels
    features = streams(model, data.tokens)                                          # (L+1, N, T, d)
    features = features.reshape(len(features), -1, features.shape[-1])             # (L+1, N*T, d)
    keep = (labels.position > 0).to_numpy()                                         # the sink position apart
    order = np.random.default_rng(config.seed).permutation(config.n_windows)
    train_windows = set(order[:int(TRAIN_SHARE * config.n_windows)].tolist())
    is_train = labels.window.isin(train_windows).to_numpy()
    train, test = keep & is_train, keep & ~is_train
    token_ids = labels.token_id.to_numpy()
    rows = []
    bar = tqdm(total=len(features) * len(PROPERTIES), desc="probes", leave=False,
               disable=None if ctx.progress is None else not ctx.progress)
    for prop_index, prop in enumerate(PROPERTIES):
        y = labels[prop].to_numpy()
        control = control_labels(token_ids, y, seed=config.seed + prop_index)
        majority = majority_accuracy(y[train], y[test])
        control_majority = majority_accuracy(control[train], control[test])   # the control's own baseline
        for layer, x in enumerate(features):
            accuracy = probe_accuracy(x[train], y[train], x[test], y[test], config.c, config.seed)
            control_accuracy = probe_accuracy(x[train], control[train], x[test], control[test], config.c, config.seed)
            rows.append({"property": prop, "layer": layer - 1, "accuracy": accuracy,
                         "control_accuracy": control_accuracy, "selectivity": accuracy - control_accuracy,
                         "majority": majority, "control_majority": control_majority})
            bar.update()
    bar.close()
    n_layers = model.config.num_hidden_layers
    pca_rows = []
    for layer in sorted({-1, n_layers // 2 - 1, n_layers - 1}):
        # standardised first, as the probes see it: a few huge coordinates (the residual stream's outlier
        # dimensions) would otherwise be the whole first component
        pca = make_pipeline(StandardScaler(), PCA(n_components=2, random_state=config.seed))
        coords = pca.fit_transform(features[layer + 1][keep])                          # (kept tokens, 2)
        pca = pca[-1]
        pca_rows.append(pd.DataFrame({"layer": layer, "token": np.flatnonzero(keep), "pc1": coords[:, 0],
                                      "pc2": coords[:, 1], "explained_1": pca.explained_variance_ratio_[0],
                                      "explained_2": pca.explained_variance_ratio_[1]}))
    tokens = labels.assign(split=np.where(is_train, "train", "test"))
    summary = {"n_layers": n_layers, "d_model": model.config.hidden_size, "n_tokens_train": int(train.sum()),
               "n_tokens_test": int(test.sum()), "n_token_types": int(labels.token_id.nunique()),
               "test_types_seen_in_train": float(np.isin(token_ids[test], token_ids[train]).mean())}
    return RunResult(tables={"probes": pd.DataFrame(rows), "pca": pd.concat(pca_rows, ignore_index=True),
                             "tokens": tokens}, summary=summary, seed=config.seed)


register(Experiment(
    name="probes",
    title="Linear probes with control tasks: what the residual stream encodes about Python, layer by layer",
    track="Representations",
    page="experiments/probes.qmd",
    version=1,
    config_type=ProbesConfig,
    scales={"smoke": {"lab-lm": ProbesConfig(model="lab-lm:smoke", n_windows=6, seq_len=16)},
            "cpu": {"smollm2": ProbesConfig(model="smollm2-135m"), "lab-lm": ProbesConfig(model="lab-lm")}},
    run=run,
    description="Probes for string, comment, bracket depth, digit, capital and position in the stream after "
                "every block of SmolLM2-135M and the lab LM, each against a control task and the majority class.",
))
