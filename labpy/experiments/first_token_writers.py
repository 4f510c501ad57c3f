"""Do SmolLM2's two first-token writers stand in for each other?

`first_token_stream` found block 11's MLP writing the first token's massive stream almost entirely through two
neurons, L11.1229 and L11.1487, and zeroing that whole write at position 0 cost nats. `neuron_knockouts` then found
that zeroing L11.1487 alone costs a few hundredths of a nat. This experiment zeroes each writer alone, both together,
and the block's whole MLP write, at position 0 only and everywhere, on the same windows, and records what each does
to the loss, to the size of position 0's stream after the block (against the other positions') and to the attention
the later heads pay to position 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..interp.hf_hooks import run_with_cache
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import NONNEG_INT, check_ranges, one_of
from .ffn_neurons import KINDS, MODELS, token_losses
from .massive_neuron import KNOCKOUTS, sink_share, zero_at
from .registry import Experiment, RunContext, register

ZEROED_AT = {name: KNOCKOUTS[name] for name in ("everywhere", "position 0 only")}


@dataclass(frozen=True)
class WritersConfig:
    model: str = "smollm2-135m"
    layer: int = 11                          # the block whose MLP writes the massive first token
    neurons: tuple[int, ...] = (1229, 1487)  # its two writers (`first_token_stream`)
    n_windows: int = 16                      # windows per kind of text: `neuron_knockouts`' own
    seq_len: int = 64

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len"), nonneg_int=("layer",),
                     rules={"model": one_of(*MODELS), "neurons": NONNEG_INT})

    def knockouts(self) -> dict[str, tuple[str, list[int] | None]]:
        """Name -> (hook point, neurons zeroed there; None: the whole write)."""
        post, out = f"blocks.{self.layer}.mlp.hook_post", f"blocks.{self.layer}.hook_mlp_out"
        alone = {f"L{self.layer}.{n} alone": (post, [n]) for n in self.neurons}
        both = ", ".join(f"L{self.layer}.{n}" for n in self.neurons)
        return alone | {f"{both} together": (post, list(self.neurons)),
                        f"block {self.layer}'s whole MLP write": (out, None)}


def first_ratio(stream: torch.Tensor) -> float:
    """Position 0's stream norm over the median of the other positions', medians over windows; stream (B, T, d)."""
    norms = stream.norm(dim=-1)                                                         # (B, T)
    return float(norms[:, 0].median() / norms[:, 1:].median())


def run(config: WritersConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)
    n_layers = model.config.num_hidden_layers
    later = range(config.layer + 1, n_layers)
    stream = f"blocks.{config.layer}.hook_resid_post"
    keep = {f"blocks.{l}.attn.hook_pattern" for l in later} | {stream}
    texts = prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1)     # {kind: (B, T + 1)}
    rows = []
    for kind in KINDS:
        tokens, targets = texts[kind][:, :-1], texts[kind][:, 1:]                          # (B, T)
        with torch.no_grad():
            logits, cache = run_with_cache(model, tokens, lambda n: n in keep)
        clean_loss = token_losses(logits, targets)[:, 1:]                                 # (B, T - 1)
        clean_sink = sink_share(cache, later)
        rows.append({"kind": kind, "knockout": "none", "zeroed_at": "nowhere", "delta_loss": 0.0,
                     "first_ratio": first_ratio(cache[stream]), "late_sink": sum(clean_sink.values()) / len(clean_sink)})
        for name, (point, neurons) in config.knockouts().items():
            for where, positions in ZEROED_AT.items():
                with torch.no_grad():
                    knocked_logits, knocked = run_with_cache(model, tokens, lambda n: n in keep,
                                                             fwd_hooks=[(point, zero_at(neurons, positions))])
                sink = sink_share(knocked, later)
                rows.append({"kind": kind, "knockout": name, "zeroed_at": where,
                             "delta_loss": float((token_losses(knocked_logits, targets)[:, 1:] - clean_loss).mean()),
                             "first_ratio": first_ratio(knocked[stream]), "late_sink": sum(sink.values()) / len(sink)})
    return RunResult(tables={"knockouts": pd.DataFrame(rows)}, summary={"n_layers": n_layers}, seed=0)


register(Experiment(
    name="first_token_writers",
    title="Do SmolLM2's two first-token writers stand in for each other?",
    track="Representations",
    page="experiments/neurons-and-values.qmd",
    version=1,
    config_type=WritersConfig,
    scales={"smoke": {"lab-lm": WritersConfig(model="lab-lm:smoke", layer=0, neurons=(1, 2), n_windows=3, seq_len=12)},
            "cpu": {"smollm2": WritersConfig()}},
    run=run,
    description="Each of block 11's two first-token writers zeroed alone, both together, and the whole MLP write, at "
                "position 0 and everywhere: loss, position 0's stream size and the late heads' sink.",
))
