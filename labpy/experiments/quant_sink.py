"""Does 4-bit rounding hurt SmolLM2 through its first-token sink or through ordinary positions?

`quant_per_matrix` found block 11's down projection — the MLP that writes SmolLM2's massive first-token activation —
the costliest matrix to round to NF4, with its output's relative rounding error at position 0 half that elsewhere.
Position 0 holds the attention sink every later position reads, so a small relative error there could still move
everything. This experiment rounds each of the costliest matrices (by `quant_per_matrix`'s ranking) three ways —
everywhere, only at position 0, only at positions 1 onward (a forward hook computes the matrix's output with the
rounded weight at the chosen positions and the fp32 weight elsewhere) — and measures the KL from the fp32 model on
positions 1 onward, the attention every query from position 1 on pays to key 0 (the sink share, over all heads), and
the absolute size of the output's rounding error at position 0 and elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..interp.hf_hooks import run_with_cache
from ..models.lm import load_lm
from ..nf4 import BLOCK, nf4_codebook, roundtrip
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import check_ranges, one_of, require
from .massive_neuron import KNOCKOUTS, sink_share
from .quant_per_matrix import linear_weights
from .registry import Experiment, RunContext, register
from .residual_stream import MODELS

WHERE = KNOCKOUTS            # everywhere, position 0 only, positions 1.. only: massive_neuron's three position sets
# quant_per_matrix's six costliest SmolLM2 matrices (mean KL over prose and code), in its order
COSTLIEST = ("11.down_proj", "29.down_proj", "29.up_proj", "2.down_proj", "0.down_proj", "3.v_proj")


@dataclass(frozen=True)
class QuantSinkConfig:
    model: str = "smollm2-135m"
    matrices: tuple[str, ...] = COSTLIEST
    n_windows: int = 8              # per kind: quant_per_matrix's windows
    seq_len: int = 128

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len"), nonempty=("matrices",),
                     rules={"model": one_of(*MODELS)})
        require(self, all(m.count(".") == 1 and m.split(".")[0].isdigit() for m in self.matrices), "matrices",
                "must name decoder matrices as 'block.module', e.g. '11.down_proj'")


def rounded_at(module: torch.nn.Linear, rounded: torch.Tensor, positions: slice):
    """A forward hook: the module's output at `positions` computed with the `rounded` weight (bias, if any, kept)."""
    def hook(mod, inputs, output):
        output = output.clone()
        x = inputs[0][:, positions]                                      # (B, P, d_in)
        output[:, positions] = output[:, positions] + x @ (rounded - mod.weight).T
        return output
    return module.register_forward_hook(hook)


@torch.no_grad()
def forward(model, tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(log-probabilities at positions 1.. flattened (N, V), the mean over heads and layers of `sink_share`)."""
    logits, cache = run_with_cache(model, tokens, lambda name: name.endswith("attn.hook_pattern"))
    shares = sink_share(cache, range(model.config.num_hidden_layers))                # (layer, head) -> share
    return logits[:, 1:].float().log_softmax(-1).flatten(0, 1), sum(shares.values()) / len(shares)


def run(config: QuantSinkConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)
    model.eval()
    linears = linear_weights(model)
    unknown = [m for m in config.matrices if m not in linears]
    if unknown:
        raise ValueError(f"matrices={unknown} are not in {config.model}; it has blocks 0–"
                         f"{len(model.model.layers) - 1} with {sorted({n.split('.')[1] for n in linears})}")
    windows = prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1)
    reference = {kind: forward(model, w[:, :-1]) for kind, w in windows.items()}
    codebook, rows = nf4_codebook(), []
    for name in config.matrices:
        module = linears[name]
        rounded = roundtrip(module.weight.data, codebook, BLOCK)
        for kind, w in windows.items():
            seen = []
            probe = module.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0] @ (rounded - m.weight).T))
            with torch.no_grad():
                model(w[:, :-1])
            probe.remove()
            error = seen[0]                                                  # (B, T, d_out) the output's rounding error
            row = {"matrix": name, "kind": kind, "error_pos0": float(error[:, 0].norm(dim=-1).mean()),
                   "error_rest": float(error[:, 1:].norm(dim=-1).mean()), "sink_fp32": reference[kind][1]}
            for label, positions in WHERE.items():
                handle = rounded_at(module, rounded, positions)
                try:
                    log_q, sink = forward(model, w[:, :-1])
                finally:
                    handle.remove()
                log_p = reference[kind][0]
                row[f"kl {label}"] = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
                row[f"sink {label}"] = sink
            rows.append(row)
    return RunResult(tables={"splits": pd.DataFrame(rows)}, summary={"model": config.model}, seed=0)


register(Experiment(
    name="quant_sink",
    title="Does 4-bit rounding hurt through the first-token sink or through ordinary positions?",
    track="Fine-tuning",
    page="experiments/qlora.qmd",
    version=1,
    config_type=QuantSinkConfig,
    scales={"smoke": {"lab-lm": QuantSinkConfig(model="lab-lm:smoke", matrices=("1.o_proj", "0.down_proj"),
                                                n_windows=2, seq_len=16)},
            "cpu": {"smollm2": QuantSinkConfig()}},
    run=run,
    description="SmolLM2's costliest matrices rounded to NF4 everywhere, at position 0 only, or at positions 1.. only: "
                "KL from fp32, the attention paid to the first token, and the rounding error's size at each.",
))
