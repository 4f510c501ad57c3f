"""Is SmolLM2's last-MLP token prior a bias the architecture lacks, and which neurons write it?

`last_mlp_role` found that a fixed token prior — the last MLP's average effect on each vocabulary entry's centred
log-probability — wins back over half of what removing the MLP costs. SmolLM2 has no bias on its output head (the
unembedding is tied to the embedding), so a fixed shift of the logits has to be written into the residual stream. If
the MLP writes roughly the same vector at every position, that vector acts as the missing bias. Three measurements:

- **the mean write**: the MLP's write replaced by its average over the fitting windows (mean ablation) at every
  position from 1 on, against zeroing it and against adding back the fixed token prior, each scored by the KL from
  the full model on the other half of the windows;
- **the prior's direction**: the residual direction whose logits best reproduce the prior (least squares through
  the centred unembedding, the final norm's gain folded in), and its cosine with the mean write;
- **the writers**: each neuron's share of the mean write, its mean activation times its output weights projected on
  the mean write's direction, and how steady that neuron is across positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..interp.hf_hooks import run_with_cache, run_with_hooks
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import check_ranges, one_of
from .last_mlp_role import fixed_token_prior, kl
from .registry import Experiment, RunContext, register
from .residual_stream import MODELS


@dataclass(frozen=True)
class LastMLPBiasConfig:
    model: str = "smollm2-135m"
    n_windows: int = 16               # per kind; means and the prior are fit on the first half, scored on the second
    seq_len: int = 128
    top_neurons: int = 12             # neurons kept in the writers table, per kind

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len", "top_neurons"), rules={"model": one_of(*MODELS)})
        if self.n_windows < 2:
            raise ValueError(f"n_windows={self.n_windows}: the means are fit on half the windows and scored on the "
                             "other half; use n_windows >= 2")


def replace_write(value: torch.Tensor | None):
    """A hook for `hook_mlp_out` that writes `value` (d,) instead of the MLP's output at positions 1.. (zeros when
    None); position 0, the sink, keeps its own write in both cases so that only ordinary positions differ."""
    def hook(write: torch.Tensor, info) -> torch.Tensor:
        write = write.clone()
        write[:, 1:] = 0 if value is None else value
        return write
    return hook


def prior_direction(prior: torch.Tensor, unembed: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(v (d,), R²): the residual direction whose logits, through the centred unembedding `unembed` (V, d) (final
    norm's gain folded in), best reproduce a centred prior (V,) in least squares, and the share of the prior's
    variance over the vocabulary it reproduces. Every logit change the model makes passes through the unembedding,
    so an average of them lies in its span (R² near 1); the question is whether the MLP writes that direction."""
    basis = unembed.double() - unembed.double().mean(0)
    target = prior.double() - prior.double().mean()
    coef = torch.linalg.lstsq(basis, target[:, None]).solution[:, 0]
    residual = target - basis @ coef
    return coef.float(), float(1 - residual.pow(2).sum() / target.pow(2).sum())


def run(config: LastMLPBiasConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)       # outside no_grad: a missing smoke lab LM is trained here
    model.eval()
    return measure(model, tokenizer, config)


@torch.no_grad()
def measure(model, tokenizer, config: LastMLPBiasConfig) -> RunResult:
    layer = model.config.num_hidden_layers - 1
    point, neurons = f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.mlp.hook_post"
    w_down = model.model.layers[layer].mlp.down_proj.weight.detach().float()             # (d, f)
    unembed = model.lm_head.weight.detach().float() * model.model.norm.weight.detach().float()   # (V, d)
    half = config.n_windows // 2
    rows, writer_rows, span = [], [], {}
    for kind, windows in prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1).items():
        fit, score = windows[:half, :-1], windows[half:, :-1]                               # (n/2, T) each
        logits, cache = run_with_cache(model, fit, [point, neurons])
        ablated = run_with_hooks(model, fit, [(point, replace_write(None))])
        prior = fixed_token_prior(logits[:, 1:].float().log_softmax(-1).flatten(0, 1),
                                  ablated[:, 1:].float().log_softmax(-1).flatten(0, 1))             # (V,)
        mean_write = cache[point][:, 1:].flatten(0, 1).mean(0)                              # (d,)
        acts = cache[neurons][:, 1:].flatten(0, 1).float()                                  # (N, f)
        del logits, ablated, cache

        full = model(score).logits[:, 1:].float().log_softmax(-1).flatten(0, 1)
        targets = windows[half:, 2:].flatten()
        zeroed = run_with_hooks(model, score, [(point, replace_write(None))])[:, 1:].float().log_softmax(-1)
        zeroed = zeroed.flatten(0, 1)
        candidates = {"without the MLP": zeroed,
                      "the fixed token prior": (zeroed + prior).log_softmax(-1),
                      "the mean write": run_with_hooks(model, score, [(point, replace_write(mean_write))])[:, 1:]
                      .float().log_softmax(-1).flatten(0, 1),
                      "full model": full}
        base = kl(full, zeroed).mean()
        for name, log_q in candidates.items():
            divergence = kl(full, log_q).mean()
            rows.append({"kind": kind, "stand_in": name, "kl": float(divergence),
                         "kl_won_back": float(1 - divergence / base),
                         "loss": float(-log_q.gather(1, targets[:, None]).mean())})
        best, r2 = prior_direction(prior, unembed)
        span[kind] = {"prior_r2": r2, "cos_mean_write": float(torch.nn.functional.cosine_similarity(best, mean_write,
                                                                                                     dim=0))}

        direction = mean_write / mean_write.norm()
        share = acts.mean(0) * (direction @ w_down) / mean_write.norm()                 # (f,) sums to 1
        order = share.abs().argsort(descending=True)
        cumulative = share[order].abs().cumsum(0) / share.abs().sum()
        spread = acts.std(0) / acts.mean(0).abs().clamp_min(1e-12)                     # (f,) std / |mean|
        writer_rows += [{"kind": kind, "rank": r + 1, "neuron": int(i), "share": float(share[i]),
                         "mean_activation": float(acts[:, i].mean()), "spread": float(spread[i]),
                         "cumulative_abs_share": float(cumulative[r])}
                        for r, i in enumerate(order[:config.top_neurons].tolist())]
        span[kind] |= {f"neurons_for_{q:g}": int((cumulative < q).sum()) + 1 for q in (0.5, 0.9)}
    summary = {"layer": layer, "model": config.model, "d_model": int(w_down.shape[0]), "d_mlp": int(w_down.shape[1]),
               "vocab": int(unembed.shape[0]), "per_kind": span}
    return RunResult(tables={"stand_ins": pd.DataFrame(rows), "writers": pd.DataFrame(writer_rows)}, summary=summary,
                     seed=0)


register(Experiment(
    name="last_mlp_bias",
    title="Is the last MLP's token prior a bias the architecture lacks, and which neurons write it?",
    track="Representations",
    page="experiments/residual-stream.qmd",
    version=1,
    config_type=LastMLPBiasConfig,
    scales={"smoke": {"lab-lm": LastMLPBiasConfig(model="lab-lm:smoke", n_windows=4, seq_len=16, top_neurons=4)},
            "cpu": {"smollm2": LastMLPBiasConfig()}},
    run=run,
    description="SmolLM2's last MLP write replaced by its mean (mean ablation) against zeroing it and against the fixed "
                "token prior; the prior's R² in the unembedding's span; the neurons that write the mean.",
))
