"""Which matrices' 4-bit rounding costs a model most: NF4 applied to one linear weight at a time.

The QLoRA page quantizes the whole lab LM base at once and finds a small gap. This experiment asks where the
gap comes from, on the lab LM and on SmolLM2-135M (a real pretrained model, with the outlier activations
LLM.int8 was built around). Every linear weight of the decoder blocks (q, k, v, o, gate, up, down; the tied
embedding and output head stay in full precision, as bitsandbytes leaves them) is rounded to NF4 — blockwise
absmax over 64 consecutive values of a row, `labpy.nf4`, which `tests/test_nf4.py` checks against bitsandbytes —
alone, with everything else in fp32, and the next-token loss and the KL from the fp32 model's distribution are
measured on held-out prose and code windows.

Per matrix the table also keeps what might predict the damage before any loss is computed:

- the weight's relative rounding error ‖Ŵ − W‖ / ‖W‖;
- the relative error of its output on the real inputs, ‖(Ŵ − W)x‖ / ‖Wx‖ over positions 1.. (ordinary tokens)
  and at position 0 (where SmolLM2's activations are massive);
- how lopsided its inputs are: the largest input channel's RMS over the median channel's (LLM.int8's outlier
  features show up here).

Then three whole-model runs: everything quantized; everything except the costliest few matrices (the single
runs' ranking, a mixed-precision recipe); and the sum of the single costs against the whole-model cost, which
says whether the damage adds up.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..models.lm import load_lm
from ..nf4 import BLOCK, nf4_codebook, roundtrip
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import check_ranges, int_at_least, number_between, one_of
from .registry import Experiment, RunContext, register
from .residual_stream import MODELS

MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class QuantPerMatrixConfig:
    model: str = "smollm2-135m"
    n_windows: int = 8              # per kind (prose, code)
    seq_len: int = 128
    block: int = BLOCK              # NF4 block size (values sharing one absmax)
    keep_share: float = 0.05        # share of matrices kept in fp32 in the mixed-precision run, costliest first

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len"),
                     rules={"model": one_of(*MODELS), "block": int_at_least(2),
                            "keep_share": number_between(0, 1, high_open=True)})


def linear_weights(model) -> dict[str, torch.nn.Linear]:
    """'block.matrix' -> the decoder blocks' linear layers, in forward order (HF Llama-style module names)."""
    return {f"{i}.{name}": getattr(layer.self_attn if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj"))
                                   else layer.mlp, name)
            for i, layer in enumerate(model.model.layers) for name in MATRICES}


@torch.no_grad()
def log_probs(model, windows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """kind -> (B·(T−1), V) log-probabilities at positions 1..T−1 of windows (B, T + 1) (position 0 is the sink)."""
    return {kind: model(w[:, :-1]).logits[:, 1:].float().log_softmax(-1).flatten(0, 1) for kind, w in windows.items()}


def damage(reference: dict[str, torch.Tensor], quantized: dict[str, torch.Tensor],
           windows: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per kind: the mean KL(fp32 ‖ quantized) and the loss increase on the true next tokens (nats)."""
    out = {}
    for kind, log_p in reference.items():
        log_q, targets = quantized[kind], windows[kind][:, 2:].flatten()
        out[f"kl_{kind}"] = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
        out[f"dloss_{kind}"] = float((log_p - log_q).gather(1, targets[:, None]).mean())
    return out


@contextmanager
def rounded(linears: dict[str, torch.nn.Linear], plan: dict[str, tuple[torch.Tensor | None, int]]) -> Iterator[None]:
    """The weights `plan` names rounded blockwise to their code book (None keeps one in fp32), restored on exit even
    after an error: plan is name -> (code book, block size)."""
    saved = {name: linears[name].weight.data for name in plan}
    try:
        for name, (codebook, block) in plan.items():
            if codebook is not None:
                linears[name].weight.data = roundtrip(saved[name], codebook, block)
        yield
    finally:
        for name, weight in saved.items():
            linears[name].weight.data = weight


@torch.no_grad()
def input_and_output_errors(model, linears: dict[str, torch.nn.Linear], windows: dict[str, torch.Tensor],
                            codebook: torch.Tensor, block: int) -> pd.DataFrame:
    """One fp32 forward per kind with a hook on every linear layer: for each matrix, the relative rounding error
    of the weight, of its output on the real inputs (positions 1.. and position 0) and its inputs' channel
    lopsidedness (max channel RMS / median channel RMS over positions 1..), all kinds pooled."""
    deltas = {n: roundtrip(m.weight.data, codebook, block) - m.weight.data for n, m in linears.items()}
    sums: dict[str, dict[str, float | torch.Tensor]] = {n: {"err": 0.0, "out": 0.0, "err0": 0.0, "out0": 0.0,
                                                           "sq": 0.0, "count": 0} for n in linears}

    def hook_for(name: str):
        def hook(module, inputs, output):
            x = inputs[0]                                                    # (B, T, d_in)
            err = x @ deltas[name].T                                         # (B, T, d_out)
            s = sums[name]
            s["err"] += float(err[:, 1:].pow(2).sum())
            s["out"] += float(output[:, 1:].pow(2).sum())
            s["err0"] += float(err[:, 0].pow(2).sum())
            s["out0"] += float(output[:, 0].pow(2).sum())
            s["sq"] = s["sq"] + x[:, 1:].pow(2).sum((0, 1))                  # (d_in,)
            s["count"] += x[:, 1:].shape[0] * x[:, 1:].shape[1]
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in linears.items()]
    try:
        for w in windows.values():
            model(w[:, :-1])
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name, m in linears.items():
        s = sums[name]
        channel_rms = (s["sq"] / s["count"]).sqrt()
        block_index, matrix = name.split(".")
        rows.append({"block": int(block_index), "matrix": matrix, "params": m.weight.numel(),
                     "weight_error": float(deltas[name].norm() / m.weight.data.norm()),
                     "output_error": math.sqrt(s["err"] / s["out"]),
                     "output_error_pos0": math.sqrt(s["err0"] / s["out0"]),
                     "input_lopsided": float(channel_rms.max() / channel_rms.median())})
    return pd.DataFrame(rows)


def run(config: QuantPerMatrixConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)
    model.eval()
    codebook = nf4_codebook()
    windows = prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1)
    linears = linear_weights(model)
    reference = log_probs(model, windows)
    matrices = input_and_output_errors(model, linears, windows, codebook, config.block)
    singles = []
    for name in tqdm(linears, desc=f"{config.model}: one matrix in NF4", leave=False):
        with rounded(linears, {name: (codebook, config.block)}):
            singles.append(damage(reference, log_probs(model, windows), windows))
    matrices = pd.concat([matrices, pd.DataFrame(singles)], axis=1)
    cost = matrices[[c for c in matrices if c.startswith("kl_")]].mean(axis=1)     # mean KL over the kinds
    n_keep = max(1, math.ceil(config.keep_share * len(linears)))
    kept = [list(linears)[i] for i in cost.sort_values(ascending=False).index[:n_keep]]
    wholes = []
    for label, names in (("all in NF4", list(linears)),
                         (f"all but the {n_keep} costliest", [n for n in linears if n not in kept])):
        with rounded(linears, {n: (codebook, config.block) for n in names}):
            wholes.append({"run": label, "n_quantized": len(names), **damage(reference, log_probs(model, windows),
                                                                            windows)})
    summary = {"model": config.model, "n_layers": len(model.model.layers), "n_matrices": len(linears),
               "kept": kept, "linear_params": int(matrices.params.sum()),
               "all_params": sum(p.numel() for p in model.parameters()),
               "n_predictions": sum(int(w[:, 2:].numel()) for w in windows.values())}
    return RunResult(tables={"matrices": matrices, "wholes": pd.DataFrame(wholes)}, summary=summary, seed=0)


register(Experiment(
    name="quant_per_matrix",
    title="Which matrices' 4-bit rounding costs most: NF4 one matrix at a time",
    track="Fine-tuning",
    page="experiments/qlora.qmd",
    version=1,
    config_type=QuantPerMatrixConfig,
    scales={"smoke": {"lab-lm": QuantPerMatrixConfig(model="lab-lm:smoke", n_windows=2, seq_len=16)},
            "cpu": {"lab-lm": QuantPerMatrixConfig(model="lab-lm"),
                    "smollm2": QuantPerMatrixConfig()}},
    run=run,
    description="Every decoder linear weight rounded to NF4 alone: KL and loss increase on prose and code, "
                "against its weight error, output error and input outliers; the whole model in NF4, and with "
                "the costliest matrices kept in fp32.",
))
