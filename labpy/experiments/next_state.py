"""Can SmolLM2 predict its own next hidden state? The user's question, made measurable two ways.

A language model is trained to predict the next token, not its next hidden state. But its state at position t + 1
is its own function of the context and the token that comes next, so its next-token distribution implies a
prediction of that state: the probability-weighted average, over its likeliest next tokens, of the state each one
would produce (the model run once per candidate). Against that **self-expectation**, this experiment sets what any
reader of position t could do:

- **persistence**: the state at t, same layer (does the stream at a layer change slowly along the text?);
- **a linear map from the same layer** and **a linear map from the last layer** at t, ridge regressions fit on
  other windows (how much of the next state is linearly readable from the present one);
- **its top guess**: the state its single most likely next token would produce.

Each is scored by R² against the true next state at every layer (the embedding and the stream after each block),
on held-out windows of prose and code, position 0 apart; the self-expectation and top guess also split by the
model's confidence (its top probability at t at least one half, or below).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import RidgeCV
from tqdm.auto import tqdm

from ..interp.hf_hooks import run_with_cache
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import check_ranges, one_of
from .registry import Experiment, RunContext, register
from .residual_stream import MODELS

ALPHAS = np.logspace(-1, 5, 7)                  # ridge penalties tried by leave-one-out


@dataclass(frozen=True)
class NextStateConfig:
    model: str = "smollm2-135m"
    n_windows: int = 16               # per kind: linear maps fit on the first half, everything scored on the second
    seq_len: int = 48
    top_k: int = 8                    # candidate next tokens behind the self-expectation

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len", "top_k"), rules={"model": one_of(*MODELS)})
        if self.n_windows < 2 or self.seq_len < 3:
            raise ValueError(f"n_windows={self.n_windows}, seq_len={self.seq_len}: the linear maps need windows of "
                             "their own and each window two scored positions; use n_windows >= 2 and seq_len >= 3")


def stream_names(n_layers: int) -> list[str]:
    """The states compared: the embedding, then the stream after each block."""
    return ["hook_embed"] + [f"blocks.{l}.hook_resid_post" for l in range(n_layers)]


@torch.no_grad()
def states(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, T) -> (every state, (L + 1, B, T, d)), (next-token log-probabilities, (B, T, V))."""
    names = stream_names(model.config.num_hidden_layers)
    logits, cache = run_with_cache(model, tokens, lambda n: n in names)
    return torch.stack([cache[n] for n in names]).float(), logits.float().log_softmax(-1)


@torch.no_grad()
def expected_next_states(model, tokens: torch.Tensor, log_probs: torch.Tensor, top_k: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """For positions t = 1..T-2 of (B, T) windows: the state (every layer) each of the model's `top_k` likeliest next
    tokens would produce at t + 1, averaged with the model's probabilities renormalised over them (the
    self-expectation), and the state of its single likeliest token (its top guess): two (L + 1, B, T - 2, d)."""
    expected, guessed = [], []
    batch = tokens.shape[0]
    for t in range(1, tokens.shape[1] - 1):
        top = log_probs[:, t].topk(top_k)                                              # (B, k)
        prefix = tokens[:, :t + 1].repeat_interleave(top_k, dim=0)                     # (B·k, t + 1)
        candidates = torch.cat([prefix, top.indices.reshape(-1, 1)], dim=1)            # (B·k, t + 2)
        last = states(model, candidates)[0][:, :, -1].reshape(-1, batch, top_k,
                                                              model.config.hidden_size)   # (L+1, B, k, d)
        weights = top.values.softmax(-1)                                               # (B, k) renormalised
        expected.append((last * weights[None, :, :, None]).sum(2))
        guessed.append(last[:, :, 0])
    return torch.stack(expected, dim=2), torch.stack(guessed, dim=2)


def r2(prediction: np.ndarray, target: np.ndarray) -> float:
    """1 − residual / total sum of squares over samples and dimensions; (N, d) each."""
    return float(1 - ((prediction - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum())


def ridge_prediction(source_fit: np.ndarray, target_fit: np.ndarray, source: np.ndarray) -> np.ndarray:
    """A ridge map fit on (source_fit -> target_fit), its penalty chosen by leave-one-out, applied to `source`."""
    return RidgeCV(alphas=ALPHAS).fit(source_fit, target_fit).predict(source)


def run(config: NextStateConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)
    model.eval()
    n_layers = model.config.num_hidden_layers
    half = config.n_windows // 2
    flat = lambda x: x.flatten(1, 2).numpy()                                            # (L+1, B, P, d) -> (L+1, N, d)
    rows = []
    for kind, windows in prose_and_code_windows(tokenizer, config.n_windows, config.seq_len).items():
        fit_states, _ = states(model, windows[:half])                                   # (L+1, B, T, d)
        score_states, log_probs = states(model, windows[half:])
        expected, guessed = expected_next_states(model, windows[half:], log_probs, config.top_k)
        now, nxt = flat(score_states[:, :, 1:-1]), flat(score_states[:, :, 2:])          # positions t and t + 1
        fit_now, fit_next = flat(fit_states[:, :, 1:-1]), flat(fit_states[:, :, 2:])
        sure = log_probs[:, 1:-1].amax(-1).exp().flatten().numpy() >= 0.5               # (N,) its top p ≥ 1/2
        self_made = {"self-expectation": flat(expected), "its top guess": flat(guessed)}
        for layer in tqdm(range(n_layers + 1), desc=f"next_state {kind}",
                          disable=None if ctx.progress is None else not ctx.progress):
            target = nxt[layer]
            predictions = {"persistence": now[layer],
                           "linear map, same layer": ridge_prediction(fit_now[layer], fit_next[layer], now[layer]),
                           "linear map, last layer": ridge_prediction(fit_now[-1], fit_next[layer], now[-1]),
                           **{name: made[layer] for name, made in self_made.items()}}
            for name, prediction in predictions.items():
                rows.append({"kind": kind, "layer": layer - 1, "predictor": name, "positions": "all",
                             "r2": r2(prediction, target), "n": len(target)})
                if name in self_made:
                    for label, mask in (("sure", sure), ("unsure", ~sure)):
                        rows.append({"kind": kind, "layer": layer - 1, "predictor": name, "positions": label,
                                     "r2": r2(prediction[mask], target[mask]) if mask.sum() > 1 else float("nan"),
                                     "n": int(mask.sum())})
    summary = {"n_layers": n_layers, "model": config.model}
    return RunResult(tables={"r2": pd.DataFrame(rows)}, summary=summary, seed=0)


register(Experiment(
    name="next_state",
    title="Can SmolLM2 predict its own next hidden state?",
    track="Representations",
    page="experiments/residual-stream.qmd",
    version=1,
    config_type=NextStateConfig,
    scales={"smoke": {"lab-lm": NextStateConfig(model="lab-lm:smoke", n_windows=4, seq_len=10, top_k=3)},
            "cpu": {"smollm2": NextStateConfig()}},
    run=run,
    description="R² of five predictions of the stream at t + 1, every layer: persistence, two ridge maps, the model's "
                "own top guess and its probability-weighted expectation over its likeliest next tokens.",
))
