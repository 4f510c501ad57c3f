"""What carries block 11's first-token rounding to the other positions: the keys or the values later layers read there?

`quant_sink` found that rounding SmolLM2's block-11 down projection to NF4 costs almost all its KL through position
0, while the attention the first token draws barely moves. After block 11, later positions can only learn about
position 0 through attention, and attention reads position 0 through two things per layer: its key (how much each
query attends there) and its value (what it reads there). This experiment rounds the matrix at position 0 only and
then restores, from an fp32 run of the same windows, position 0's keys, its values, or both, in every later layer —
and the values one layer at a time. Restoring both must win back everything (a check of the argument); the split
between keys and values, and the layers whose values matter, say how the damage travels.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..models.lm import load_lm
from ..nf4 import BLOCK, nf4_codebook, roundtrip
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import check_ranges, int_at_least, one_of
from .quant_per_matrix import linear_weights
from .quant_sink import rounded_at
from .registry import Experiment, RunContext, register
from .residual_stream import MODELS


@dataclass(frozen=True)
class FirstTokenConfig:
    model: str = "smollm2-135m"
    block: int = 11                  # the block whose down projection is rounded at position 0
    n_windows: int = 8               # per kind: quant_per_matrix's windows
    seq_len: int = 128

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len"),
                     rules={"model": one_of(*MODELS), "block": int_at_least(0)})


def keep_position_0(module: torch.nn.Module, clean: torch.Tensor):
    """A forward hook that puts back `clean` (B, d) as the module's output at position 0."""
    def hook(mod, inputs, output):
        output = output.clone()
        output[:, 0] = clean
        return output
    return module.register_forward_hook(hook)


@torch.no_grad()
def log_probs_with(model, tokens: torch.Tensor, hooks) -> torch.Tensor:
    """(B·(T−1), V) log-probabilities at positions 1.. with `hooks` (callables returning handles) attached."""
    handles = [attach() for attach in hooks]
    try:
        return model(tokens).logits[:, 1:].float().log_softmax(-1).flatten(0, 1)
    finally:
        for h in handles:
            h.remove()


def run(config: FirstTokenConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)
    model.eval()
    layers = model.model.layers
    if config.block >= len(layers) - 1:
        raise ValueError(f"block={config.block}: {config.model} has blocks 0–{len(layers) - 1} and the block needs a "
                         f"later one to read its write; pick a block below {len(layers) - 1}")
    down = linear_weights(model)[f"{config.block}.down_proj"]
    rounded = roundtrip(down.weight.data, nf4_codebook(), BLOCK)
    later = range(config.block + 1, len(layers))
    rows = []
    for kind, windows in prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1).items():
        tokens = windows[:, :-1]
        clean: dict[tuple[str, int], torch.Tensor] = {}

        def keep(name: str, layer: int):
            def hook(mod, inputs, output):
                clean[(name, layer)] = output[:, 0].detach().clone()
            return hook

        handles = [getattr(layers[l].self_attn, f"{n}_proj").register_forward_hook(keep(n, l))
                   for l in later for n in ("k", "v")]
        try:
            reference = log_probs_with(model, tokens, [])
        finally:
            for h in handles:
                h.remove()
        round_0 = lambda: rounded_at(down, rounded, slice(0, 1))                          # noqa: E731

        def restore(names: tuple[str, ...], at: range):
            return [lambda l=l, n=n: keep_position_0(getattr(layers[l].self_attn, f"{n}_proj"), clean[(n, l)])
                    for l in at for n in names]

        variants = {"rounded at position 0": [round_0],
                    "keys and values restored": [round_0, *restore(("k", "v"), later)],
                    "values restored": [round_0, *restore(("v",), later)],
                    "keys restored": [round_0, *restore(("k",), later)]}
        variants |= {f"values restored in layer {l}": [round_0, *restore(("v",), range(l, l + 1))] for l in later}
        for label, hooks in variants.items():
            log_q = log_probs_with(model, tokens, hooks)
            rows.append({"kind": kind, "variant": label,
                         "layer": int(label.rsplit(" ", 1)[1]) if "in layer" in label else -1,
                         "kl": float((reference.exp() * (reference - log_q)).sum(-1).mean())})
    summary = {"model": config.model, "block": config.block, "n_layers": len(layers)}
    return RunResult(tables={"restores": pd.DataFrame(rows)}, summary=summary, seed=0)


register(Experiment(
    name="quant_first_token",
    title="What carries the first token's rounding onward: the keys or the values later layers read there?",
    track="Fine-tuning",
    page="experiments/qlora.qmd",
    version=1,
    config_type=FirstTokenConfig,
    scales={"smoke": {"lab-lm": FirstTokenConfig(model="lab-lm:smoke", block=0, n_windows=2, seq_len=16)},
            "cpu": {"smollm2": FirstTokenConfig()}},
    run=run,
    description="SmolLM2's block-11 down projection rounded to NF4 at position 0 only, with position 0's keys, values "
                "or both restored from fp32 in every later layer, and the values one layer at a time.",
))
