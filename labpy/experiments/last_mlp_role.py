"""What SmolLM2's last MLP writes: a correction of the logit scale, a fixed token prior, or something that depends
on the token and its context?

The residual-stream page found the last MLP the loudest writer of the model and the largest single direct
attribution to the correct next token. This experiment removes its write (zeroes the MLP's output; the final
RMSNorm then sees the stream without it) and compares the next-token distributions with and without it on
windows of prose and code, position 0 apart. Then it asks how much of the difference (the KL from the full
model's distribution to the one without the MLP) simpler stand-ins win back:

- **a temperature**: the ablated logits multiplied by the best factor for each position, found with the full
  model's distribution known (an upper bound on what any rescaling of the logits can do);
- **a fixed token prior**: the MLP's average effect on each vocabulary entry's centred logit, fit on the other
  half of the windows and added back at every position;
- **both**: the prior added, then the best temperature.

The third leaves what is specific to the token and its context. The tables keep one row per kind and stand-in,
and, among the tokens the full model predicts first somewhere in the fitting windows, those whose logits the prior
raises and lowers most (over the whole vocabulary, the largest shifts fall on word fragments no position expects).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..interp.hf_hooks import run_with_hooks
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import check_ranges, one_of
from .massive_neuron import zero_at
from .registry import Experiment, RunContext, register
from .residual_stream import MODELS



@dataclass(frozen=True)
class LastMLPConfig:
    model: str = "smollm2-135m"
    n_windows: int = 16               # per kind; the token prior is fit on the first half, scored on the second
    seq_len: int = 128
    bisection_steps: int = 30         # for each position's best temperature (the KL is convex in it)
    top_tokens: int = 10              # tokens kept per direction in the prior table

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len", "bisection_steps", "top_tokens"),
                     rules={"model": one_of(*MODELS)})
        if self.n_windows < 2:
            raise ValueError(f"n_windows={self.n_windows}: the prior is fit on half the windows and scored on the "
                             "other half; use n_windows >= 2")


@torch.no_grad()
def logits_with_and_without(model, tokens: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, T) -> full and ablated log-probabilities at positions 1..T-1 (position 0 is the sink token),
    flattened: two (B·(T-1), V). Ablated: the MLP of `layer` writes zeros to the residual stream, so everything
    after it, the final norm included, sees the stream without that write."""
    full = model(tokens).logits[:, 1:].float()
    ablated = run_with_hooks(model, tokens, [(f"blocks.{layer}.hook_mlp_out", zero_at(None, slice(None)))])
    return full.log_softmax(-1).flatten(0, 1), ablated[:, 1:].float().log_softmax(-1).flatten(0, 1)


def fixed_token_prior(full: torch.Tensor, ablated: torch.Tensor) -> torch.Tensor:
    """(V,) the MLP's average effect on each vocabulary entry's centred log-probability, from (N, V) log-probabilities
    with and without it (centring removes each position's own normalisation shift)."""
    shift = full - ablated                                                              # (N, V)
    return (shift - shift.mean(-1, keepdim=True)).mean(0)


def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, from log-probabilities (N, V) -> (N,)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def best_temperature(log_p: torch.Tensor, logits: torch.Tensor, steps: int, largest: float = 50.0) -> torch.Tensor:
    """(N,) factors β in [0, `largest`] minimising KL(p ‖ softmax(β·logits)) for each row, by bisection.

    The KL is convex in β: its derivative E_q[ℓ] − E_p[ℓ] (q = softmax(βℓ)) rises with β, so halving the bracket
    around its zero `steps` times finds the minimum to within largest / 2^steps. (Newton's method from β = 1
    overshoots on real logits, whose KL is far from quadratic in β.)"""
    target = (log_p.exp() * logits).sum(-1)                                             # E_p[ℓ]  (N,)
    low = torch.zeros(logits.shape[0], dtype=logits.dtype)
    high = torch.full_like(low, largest)
    for _ in range(steps):
        beta = (low + high) / 2
        rising = ((beta[:, None] * logits).softmax(-1) * logits).sum(-1) > target        # past the minimum
        high, low = torch.where(rising, beta, high), torch.where(rising, low, beta)
    return (low + high) / 2


def stand_in_rows(full: torch.Tensor, ablated: torch.Tensor, prior: torch.Tensor, targets: torch.Tensor,
                  steps: int) -> list[dict]:
    """Per stand-in: the mean KL from the full model (nats), the loss on the true next tokens and the share of the
    ablation's KL it wins back. full, ablated (N, V) log-probabilities; prior (V,) centred logit shift."""
    with_prior = (ablated + prior).log_softmax(-1)
    base = kl(full, ablated)
    candidates = {"without the MLP": ablated,
                  "a temperature": (best_temperature(full, ablated, steps)[:, None] * ablated).log_softmax(-1),
                  "a fixed token prior": with_prior,
                  "prior and temperature": (best_temperature(full, with_prior, steps)[:, None]
                                            * with_prior).log_softmax(-1),
                  "full model": full}
    rows = []
    for name, log_q in candidates.items():
        divergence = kl(full, log_q)
        rows.append({"stand_in": name, "kl": float(divergence.mean()),
                     "loss": float(-log_q.gather(1, targets[:, None]).mean()),
                     "kl_won_back": float(1 - divergence.mean() / base.mean()),
                     "entropy": float(-(log_q.exp() * log_q).sum(-1).mean()),
                     "top1_changed": float((log_q.argmax(-1) != full.argmax(-1)).float().mean())})
    return rows


def run(config: LastMLPConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)
    model.eval()
    layer = model.config.num_hidden_layers - 1
    half = config.n_windows // 2
    rows, prior_rows = [], []
    for kind, windows in prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1).items():
        fit, score = windows[:half], windows[half:]                                     # (n/2, T + 1) each
        full_fit, ablated_fit = logits_with_and_without(model, fit[:, :-1], layer)
        prior = fixed_token_prior(full_fit, ablated_fit)                                # (V,)
        likely = full_fit.argmax(-1).unique()                   # tokens the full model predicts somewhere
        del full_fit, ablated_fit
        full, ablated = logits_with_and_without(model, score[:, :-1], layer)
        targets = score[:, 2:].flatten()                                # the next tokens of positions 1..T-1
        rows += [{"kind": kind, **r} for r in stand_in_rows(full, ablated, prior, targets, config.bisection_steps)]
        order = likely[prior[likely].argsort()]                                         # likely tokens, by shift
        for direction, ids in (("raised", order.flip(0)[:config.top_tokens]), ("lowered", order[:config.top_tokens])):
            prior_rows += [{"kind": kind, "direction": direction, "rank": i + 1, "token": tokenizer.decode([t]),
                            "shift": float(prior[t])} for i, t in enumerate(ids.tolist())]
    summary = {"layer": layer, "n_layers": model.config.num_hidden_layers, "model": config.model}
    return RunResult(tables={"stand_ins": pd.DataFrame(rows), "prior": pd.DataFrame(prior_rows)}, summary=summary,
                     seed=0)


register(Experiment(
    name="last_mlp_role",
    title="What SmolLM2's last MLP writes: a logit scale, a token prior, or something specific",
    track="Representations",
    page="experiments/residual-stream.qmd",
    version=1,
    config_type=LastMLPConfig,
    scales={"smoke": {"lab-lm": LastMLPConfig(model="lab-lm:smoke", n_windows=4, seq_len=16, bisection_steps=20)},
            "cpu": {"smollm2": LastMLPConfig()}},
    run=run,
    description="The last MLP's write removed: KL and loss without it, and how much a per-position temperature, a "
                "fixed token prior (fit on other windows) or both win back, on prose and code.",
))
