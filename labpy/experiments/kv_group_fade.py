"""Why do SmolLM2's query heads that share a key/value head grow less alike in later layers?

The attention-heads page found SmolLM2's key/value groups (3 query heads reading one key/value head) alike beyond
chance in their scores, most of all in the first half of the network, and that what a group shares most is how much
of its attention parks on the first token. Two explanations of the fade compete:

- **the sink**: the first token's key is shared by the group and draws most of the attention in early layers; as
  later layers park less there, less of the attention is shared for free;
- **the queries**: the heads of a group aim their queries apart in later layers, whatever the sink does.

Per layer, on windows of prose and code, this experiment measures how differently two heads attend (the mean
total-variation distance between their attention, query by query from 1 on), with the first token's key in and with
it taken out (each query's attention over keys 1.. renormalised), for pairs within and across groups; the attention
parked on the first token; and how alike two heads' query–key circuits are at equal positions, the cosine between
their W_Qᵀ·W_K (RoPE rotates queries and keys alike, so at relative offset 0 it leaves the product unchanged;
biases, which SmolLM2 does not have, are left out).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pandas as pd
import torch

from ..interp.hf_hooks import heads, hooks, kv_head_of
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import check_ranges, one_of
from .registry import Experiment, RunContext, register
from .residual_stream import MODELS


@dataclass(frozen=True)
class KVGroupFadeConfig:
    model: str = "smollm2-135m"
    n_windows: int = 8          # per kind
    seq_len: int = 128

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len"), rules={"model": one_of(*MODELS)})
        if self.seq_len < 3:
            raise ValueError(f"seq_len={self.seq_len}: the attention without the first token needs queries from 2 on; "
                             "use seq_len >= 3")


def pattern_distances(pattern: torch.Tensor, drop_first_key: bool) -> torch.Tensor:
    """(H, H) mean total-variation distance between heads' attention (B, H, T, T), over windows and queries from 1
    on: the share of a query's attention two heads place differently (0 alike, 1 disjoint). With `drop_first_key`,
    over queries from 2 on, each query's attention over keys 1.. renormalised (where the heads look besides the
    first token); a query with no attention left outside the first token, in the pattern's precision, is skipped
    for that pair."""
    p = pattern.double()[:, :, 2:, 1:] if drop_first_key else pattern.double()[:, :, 1:]
    total = p.sum(-1, keepdim=True)          # over keys 1.. itself, not 1 − p₀: in float32 p₀ can round to 1
    seen = total[..., 0] > 0                                                              # (B, H, Q)
    p = p / total.clamp_min(1e-300)
    H = p.shape[1]
    out = torch.zeros(H, H, dtype=torch.float64)
    for a, b in itertools.combinations(range(H), 2):
        both = seen[:, a] & seen[:, b]       # a query whose attention outside the first token underflows is skipped
        out[a, b] = out[b, a] = 0.5 * (p[:, a] - p[:, b]).abs().sum(-1)[both].mean()
    return out


def qk_circuits(attn, n_heads: int, n_kv: int, head_dim: int) -> torch.Tensor:
    """(H, d·d) each head's query–key bilinear form W_Qᵀ·W_K at relative offset 0, flattened."""
    w_q = attn.q_proj.weight.detach().double().unflatten(0, (n_heads, head_dim))              # (H, h, d)
    w_k = attn.k_proj.weight.detach().double().unflatten(0, (n_kv, head_dim))                 # (KV, h, d)
    kv = torch.arange(n_heads) // (n_heads // n_kv)
    return torch.einsum("ahd,ahe->ade", w_q, w_k[kv]).flatten(1)


def within_across(matrix: torch.Tensor, groups: torch.Tensor) -> tuple[float, float]:
    """Mean of `matrix` (H, H) over distinct pairs in the same group, and over pairs in different groups."""
    within, across = [], []
    for a, b in itertools.combinations(range(len(groups)), 2):
        (within if groups[a] == groups[b] else across).append(float(matrix[a, b]))
    return sum(within) / len(within), sum(across) / len(across)


def run(config: KVGroupFadeConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)
    model.eval()
    n_heads, n_kv, head_dim = heads(model)
    groups = kv_head_of(model)
    layers = model.model.layers
    rows = []
    for kind, windows in prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1).items():
        found: dict[int, dict[str, float]] = {}

        def measure(pattern: torch.Tensor, info) -> None:
            full = within_across(pattern_distances(pattern, False), groups)
            rest = within_across(pattern_distances(pattern, True), groups)
            found[info.layer] = {"distance_within": full[0], "distance_across": full[1],
                                 "no_sink_within": rest[0], "no_sink_across": rest[1],
                                 "sink_share": float(pattern[:, :, 1:, 0].mean())}

        with torch.no_grad(), hooks(model, [(lambda name: name.endswith("attn.hook_pattern"), measure)]):
            model(windows[:, :-1])
        for layer in range(len(layers)):
            rows.append({"kind": kind, "layer": layer, **found[layer]})
    circuit_rows = []
    for layer, block in enumerate(layers):
        circuits = torch.nn.functional.normalize(qk_circuits(block.self_attn, n_heads, n_kv, head_dim), dim=-1)
        within, across = within_across(circuits @ circuits.T, groups)
        circuit_rows.append({"layer": layer, "qk_within": within, "qk_across": across})
    summary = {"model": config.model, "n_layers": len(layers), "n_heads": n_heads, "n_kv_heads": n_kv}
    return RunResult(tables={"patterns": pd.DataFrame(rows), "circuits": pd.DataFrame(circuit_rows)},
                     summary=summary, seed=0)


register(Experiment(
    name="kv_group_fade",
    title="Why do query heads sharing a key/value head grow less alike in later layers?",
    track="Attention & circuits",
    page="experiments/attention-heads.qmd",
    version=1,
    config_type=KVGroupFadeConfig,
    scales={"smoke": {"lab-lm": KVGroupFadeConfig(model="lab-lm:smoke", n_windows=2, seq_len=16)},
            "cpu": {"smollm2": KVGroupFadeConfig()}},
    run=run,
    description="SmolLM2's attention patterns compared within and across key/value groups per layer, with and without "
                "the first token's key (total-variation distance), beside the attention parked there and the heads' "
                "query–key circuits.",
))
