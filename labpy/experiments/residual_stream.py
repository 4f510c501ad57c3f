"""The residual stream of a real language model, layer by layer: how big it gets, who writes to it, and when the
answer appears in it.

Run (one entry per model, SmolLM2-135M and the lab LM) over windows of prose and Python source:
- the residual stream's norm entering each block and leaving the last (position 0 apart: the first token's
  stream grows far larger in models with an attention sink), its variance across tokens, and how much of that
  variance lies along one direction;
- what attention and the MLP write at each block, by norm and by **direct logit attribution** to the correct
  next token — the write's projection on the token's unembedding direction, centred over the vocabulary,
  through the final RMSNorm with its scale frozen at the final stream's (exact: the components sum to the
  final centred logit);
- the **logit lens**: each block's output read through the final norm and the unembedding, scored by KL to
  the model's final distribution, top-1 agreement with it, and cross-entropy on the true next token.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from ..interp.hf_hooks import run_with_cache
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import check_ranges, one_of
from .registry import Experiment, RunContext, register

MODELS = ("smollm2-135m", "lab-lm", "lab-lm:smoke")
KINDS = ("prose", "code")


@dataclass(frozen=True)
class ResidualConfig:
    model: str = "smollm2-135m"
    n_windows: int = 8
    seq_len: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len"), nonneg_int=("seed",),
                     rules={"model": one_of(*MODELS)})


def windows(tokenizer, config: ResidualConfig) -> dict[str, torch.Tensor]:
    """{kind: (n_windows, seq_len + 1)} token ids: inputs and, shifted by one, their next tokens."""
    return prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1)


def final_norm_scale(model, resid: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (..., 1): 1 / RMS of the final residual stream, the factor the final RMSNorm divides by."""
    eps = model.model.norm.variance_epsilon
    return torch.rsqrt(resid.pow(2).mean(-1, keepdim=True) + eps)


@torch.no_grad()
def layer_table(model, tokens: torch.Tensor) -> pd.DataFrame:
    """One row per block: residual, attention and MLP norms, direct logit attributions, logit-lens scores.

    tokens (B, T + 1); positions 1..T-1 of the inputs are scored (position 0 is the sink token)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]                                          # (B, T)
    logits, c = run_with_cache(model, inputs, lambda n: n.endswith(("hook_attn_out", "hook_mlp_out",
                                                                      "hook_resid_pre", "hook_resid_post"))
                               or n == "hook_embed")
    n_layers = model.config.num_hidden_layers
    w_u = model.lm_head.weight                                                                # (V, d)
    gamma = model.model.norm.weight                                                           # (d,)
    final = c[f"blocks.{n_layers - 1}.hook_resid_post"]                                       # (B, T, d)
    scale = final_norm_scale(model, final)                                                    # (B, T, 1)
    direction = (w_u[targets] - w_u.mean(0)) * gamma                                          # (B, T, d)

    def dla(x: torch.Tensor) -> torch.Tensor:                                                 # (B, T, d) -> (B, T)
        return (x * scale * direction).sum(-1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:].norm(dim=-1).mean()

    def spread(x: torch.Tensor) -> dict[str, float]:
        """Variance of the stream across tokens (positions 1..): total, per dimension, and the share of the total
        along its top principal direction (small if the variance spreads over many directions, near 1 if one
        dominates)."""
        flat = x[:, 1:].reshape(-1, x.shape[-1]).double()                                    # (N, d)
        eigenvalues = torch.linalg.eigvalsh(torch.cov(flat.T))                                # (d,) ascending
        total = eigenvalues.sum()
        return {"resid_var": float(total / x.shape[-1]), "resid_top_pc_share": float(eigenvalues[-1] / total)}

    final_logp = F.log_softmax(logits[:, 1:], -1)                                             # (B, T-1, V)
    rows = [{"layer": -1, "component": "embedding", "resid_norm": float(norm(c["hook_embed"])),
             **spread(c["hook_embed"]),
             "resid_norm_first": float(c["hook_embed"][:, 0].norm(dim=-1).mean()),
             "dla": float(dla(c["hook_embed"])[:, 1:].mean())}]
    for layer in range(n_layers):
        p = f"blocks.{layer}."
        post = c[p + "hook_resid_post"]
        lens = F.log_softmax(model.lm_head(model.model.norm(post[:, 1:])), -1)                # (B, T-1, V)
        rows.append({
            "layer": layer, "component": "block",
            "resid_norm": float(norm(post)), "resid_norm_first": float(post[:, 0].norm(dim=-1).mean()), **spread(post),
            "attn_norm": float(norm(c[p + "hook_attn_out"])), "mlp_norm": float(norm(c[p + "hook_mlp_out"])),
            "attn_dla": float(dla(c[p + "hook_attn_out"])[:, 1:].mean()),
            "mlp_dla": float(dla(c[p + "hook_mlp_out"])[:, 1:].mean()),
            "lens_kl": float((final_logp.exp() * (final_logp - lens)).sum(-1).mean()),
            "lens_top1": float((lens.argmax(-1) == final_logp.argmax(-1)).float().mean()),
            "lens_ce": float(-lens.gather(-1, targets[:, 1:, None]).mean()),
        })
        del lens
    centred = (logits - logits.mean(-1, keepdim=True)).gather(-1, targets[..., None])[..., 0]   # (B, T)
    rows.append({"layer": n_layers, "component": "final logit (centred)", "dla": float(centred[:, 1:].mean())})
    return pd.DataFrame(rows)


def run(config: ResidualConfig, ctx: RunContext) -> RunResult:
    torch.manual_seed(config.seed)
    model, tokenizer = load_lm(config.model)
    frames = [layer_table(model, tokens).assign(kind=kind) for kind, tokens in windows(tokenizer, config).items()]
    summary = {"n_layers": model.config.num_hidden_layers, "d_model": model.config.hidden_size,
               "architecture": type(model).__name__, "tied_embeddings": bool(model.config.tie_word_embeddings)}
    return RunResult(tables={"layers": pd.concat(frames, ignore_index=True)}, summary=summary, seed=config.seed)


register(Experiment(
    name="residual_stream",
    title="The residual stream of a real LM: its size, who writes to it, and when the answer appears",
    track="Representations",
    page="experiments/residual-stream.qmd",
    version=2,                         # 2: the stream's variance and its top principal direction's share
    config_type=ResidualConfig,
    scales={"smoke": {"lab-lm": ResidualConfig(model="lab-lm:smoke", n_windows=2, seq_len=12)},
            "cpu": {"smollm2": ResidualConfig(model="smollm2-135m"), "lab-lm": ResidualConfig(model="lab-lm")}},
    run=run,
    description="Residual norms, attention vs MLP writes (norm and direct logit attribution) and the logit lens, "
                "layer by layer, for SmolLM2-135M and the lab LM on prose and code.",
))
