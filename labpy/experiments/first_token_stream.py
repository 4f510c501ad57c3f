"""What makes SmolLM2's first-token stream massive, and what the model does with it.

`massive_neuron` found position 0's residual stream only a few times the other positions' norm through the early
layers, about equal after layers 9–10, and over 100× after layer 11. This experiment asks who writes that jump and
whether the model needs it. On the same prose and code windows it records:

- **writes**: per layer, the norm of what attention and the MLP write at position 0 and (median) at the other
  positions, and the stream's norm after the block;
- **neurons**: the neurons of the jump layer's MLP that write most along its write at position 0 (activation times
  the W_down column, projected on the write's direction), with their activation at position 0 and elsewhere;
- **sink**: every layer's mean attention from positions 1.. to position 0, clean and with the jump layer's MLP
  write at position 0 zeroed (layers up to the jump cannot change);
- **knockouts**: the next-token loss change from that same zeroing, and from zeroing the jump layer's MLP write at
  every other position instead (a control of the same kind).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..interp.hf_hooks import decoder_parts, run_with_cache
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import check_ranges, one_of
from .ffn_neurons import KINDS, token_losses
from .massive_neuron import sink_share, zero_at
from .registry import Experiment, RunContext, register


@dataclass(frozen=True)
class FirstTokenConfig:
    model: str = "smollm2-135m"
    jump_layer: int = 11              # the block after which `massive_neuron` saw position 0's stream jump past 100×
    n_windows: int = 48               # windows per kind of text: `ffn_neurons`' own
    seq_len: int = 64
    top_neurons: int = 8              # neurons of the jump layer's MLP kept, by their share of its write at position 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len", "top_neurons"), nonneg_int=("jump_layer",),
                     rules={"model": one_of("smollm2-135m", "lab-lm", "lab-lm:smoke")})


def zero_write(positions: slice):
    """A `hook_mlp_out` (or `hook_attn_out`) function that removes the block's write at the given positions."""
    return zero_at(None, positions)


KNOCKOUTS = {"position 0": slice(0, 1), "positions 1..": slice(1, None)}


def neuron_shares(post: torch.Tensor, w_down: torch.Tensor, top: int) -> pd.DataFrame:
    """The neurons that write most along the MLP's own write at position 0, averaged over windows.

    post (B, T, f) the neurons' activations, w_down (d, f). Each neuron's part of the write at position 0 is
    a_i w_i; projected on the unit write ŵ = Σ a_i w_i / ‖Σ a_i w_i‖, the parts add up to ‖write‖, so a neuron's
    share is a_i (w_i · ŵ) / ‖write‖ (shares can be negative; they sum to 1 per window)."""
    first = post[:, 0]                                                                 # (B, f)
    write = first @ w_down.T                                                           # (B, d)
    unit = write / write.norm(dim=-1, keepdim=True)                                    # (B, d)
    shares = first * (unit @ w_down) / write.norm(dim=-1, keepdim=True)               # (B, f)
    mean_share = shares.mean(0)                                                        # (f,)
    rows = []
    for rank, i in enumerate(mean_share.abs().topk(top).indices.tolist()):
        rows.append({"rank": rank + 1, "neuron": i, "share": float(mean_share[i]),
                     "activation_first": float(first[:, i].mean()),
                     "mean_abs_activation_rest": float(post[:, 1:, i].abs().mean())})
    return pd.DataFrame(rows)


def run(config: FirstTokenConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)
    n_layers = model.config.num_hidden_layers
    jump = f"blocks.{config.jump_layer}.hook_mlp_out"
    post_name = f"blocks.{config.jump_layer}.mlp.hook_post"
    patterns = {f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)}
    writes_wanted = {f"blocks.{l}.{p}" for l in range(n_layers) for p in ("hook_attn_out", "hook_mlp_out",
                                                                           "hook_resid_post")}
    w_down = decoder_parts(model)[1][config.jump_layer].mlp.down_proj.weight.detach()  # (d, f)
    texts = prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1)    # {kind: (B, T + 1)}
    write_rows, neuron_rows, sink_rows, knockout_rows = [], [], [], []
    for kind in KINDS:
        tokens, targets = texts[kind][:, :-1], texts[kind][:, 1:]                         # (B, T)
        with torch.no_grad():
            logits, cache = run_with_cache(model, tokens,
                                           lambda n: n in patterns or n in writes_wanted or n == post_name)
        clean_loss = token_losses(logits, targets)                                       # (B, T)
        for l in range(n_layers):
            row = {"kind": kind, "layer": l}
            for short, name in (("attn", "hook_attn_out"), ("mlp", "hook_mlp_out"), ("stream", "hook_resid_post")):
                norms = cache[f"blocks.{l}.{name}"].norm(dim=-1)                         # (B, T)
                row[f"{short}_first"], row[f"{short}_rest"] = float(norms[:, 0].median()), float(norms[:, 1:].median())
            write_rows.append(row)
        neuron_rows += neuron_shares(cache[post_name], w_down, config.top_neurons).assign(kind=kind).to_dict("records")
        clean_sink = sink_share(cache, range(n_layers))
        for name, positions in KNOCKOUTS.items():
            with torch.no_grad():
                knocked_logits, knocked = run_with_cache(model, tokens, lambda n: n in patterns,
                                                         fwd_hooks=[(jump, zero_write(positions))])
            delta = (token_losses(knocked_logits, targets) - clean_loss)[:, 1:]          # (B, T - 1)
            knockout_rows.append({"kind": kind, "zeroed at": name, "delta_loss": float(delta.mean()),
                                  "delta_loss_median": float(delta.median())})
            if name == "position 0":
                knocked_sink = sink_share(knocked, range(n_layers))
                sink_rows += [{"kind": kind, "layer": l, "head": h, "clean": share, "knocked": knocked_sink[l, h]}
                              for (l, h), share in clean_sink.items()]
    summary = {"n_layers": n_layers, "n_heads": model.config.num_attention_heads,
               "d_mlp": model.config.intermediate_size}
    return RunResult(tables={"writes": pd.DataFrame(write_rows), "neurons": pd.DataFrame(neuron_rows),
                             "sink": pd.DataFrame(sink_rows), "knockouts": pd.DataFrame(knockout_rows)},
                     summary=summary)


register(Experiment(
    name="first_token_stream",
    title="Who writes SmolLM2's massive first token, and what the late heads and the loss do without it",
    track="Representations",
    page="experiments/neurons-and-values.qmd",
    version=1,
    config_type=FirstTokenConfig,
    scales={"smoke": {"lab-lm": FirstTokenConfig(model="lab-lm:smoke", jump_layer=1, n_windows=3, seq_len=12,
                                                 top_neurons=3)},
            "cpu": {"smollm2": FirstTokenConfig()}},
    run=run,
    description="Per layer, attention's and the MLP's writes at position 0 against the rest; the jump layer's top "
                "neurons there; every head's attention to position 0 and the loss with that write zeroed.",
))
