"""Which heads read the first token's rounded values, and what the change in those values is.

`quant_first_token` found that rounding SmolLM2's block-11 down projection at position 0 does its damage through
position 0's value vectors in later layers, spread over layers (18, 20 and 23 the most). A layer's value vectors
belong to its key/value heads (SmolLM2: 3, each shared by 3 query heads), and a query head reads position 0's value
in proportion to the attention it pays there. So this experiment restores, from an fp32 run of the same windows,

- position 0's values of one key/value head at a time, in every later layer, and
- what one query head reads of them, in the named layers: a hook on the head's output before W_O adds back
  a(t, 0)·(v₀ clean − v₀ rounded), which is exactly what restoring the value changes for that head alone (a
  layer's value does not change its own attention pattern), so a group's query heads together equal its
  key/value head.

Beside the KL it records, per query head of the named layers, how much attention goes to position 0, how large
the changed write W_O·Δv₀ is, and how large the clean first-token write is against the other positions' writes
(is the sink's value a near no-op that the rounding wakes?); per key/value head, whether the change Δv₀ points
the same way in every window (a fixed offset rather than token information); and the tokens the changed write of
each named layer's costliest query head raises and lowers directly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pandas as pd
import torch

from ..interp.hf_hooks import heads, hooks, kv_head_of
from ..models.lm import load_lm
from ..nf4 import BLOCK, nf4_codebook, roundtrip
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import NONNEG_INT, check_ranges, int_at_least, one_of
from .massive_neuron import direct_logits
from .quant_first_token import keep_position_0, log_probs_with
from .quant_per_matrix import linear_weights
from .quant_sink import rounded_at
from .registry import Experiment, RunContext, register
from .residual_stream import MODELS


@dataclass(frozen=True)
class FirstTokenHeadsConfig:
    model: str = "smollm2-135m"
    block: int = 11                          # the block whose down projection is rounded at position 0
    layers: tuple[int, ...] = (18, 20, 23)   # layers whose query heads are restored one by one
    n_windows: int = 8                       # per kind: quant_first_token's windows
    seq_len: int = 128
    top_k: int = 8                           # tokens listed per direction for each layer's costliest head

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len", "top_k"), nonempty=("layers",),
                     rules={"model": one_of(*MODELS), "block": int_at_least(0), "layers": NONNEG_INT})


def add_back(layer: int, pattern: torch.Tensor, delta: torch.Tensor, head: int, kv_head: int):
    """A `blocks.{layer}.attn.hook_z` hook adding `head`'s share of a changed first-token value: a(t, 0)·Δv₀.

    pattern (B, H, T, T) from the rounded run; delta (B, KV, h) = clean − rounded values at position 0."""
    def hook(z, info):                                                                 # z (B, T, H, h)
        z = z.clone()
        z[:, :, head] += pattern[:, head, :, 0, None] * delta[:, None, kv_head]
        return z
    return f"blocks.{layer}.attn.hook_z", hook


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    """Mean cosine between distinct rows of x (N, d)."""
    unit = torch.nn.functional.normalize(x.double(), dim=-1)
    sims = unit @ unit.T                                                                # (N, N)
    n = len(x)
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def run(config: FirstTokenHeadsConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)
    with torch.no_grad():
        return _run(model, tokenizer, config)


def _run(model, tokenizer, config: FirstTokenHeadsConfig) -> RunResult:
    model.eval()
    layers = model.model.layers
    n_layers = len(layers)
    wrong = [l for l in config.layers if not config.block < l < n_layers]
    if config.block >= n_layers - 1 or wrong:
        raise ValueError(f"layers={wrong or list(config.layers)}: with block={config.block}, {config.model} has "
                         f"later layers {config.block + 1}–{n_layers - 1}; pick layers among those")
    n_heads, n_kv, head_dim = heads(model)
    kv_of = kv_head_of(model)                                                          # (H,)
    down = linear_weights(model)[f"{config.block}.down_proj"]
    rounded = roundtrip(down.weight.data, nf4_codebook(), BLOCK)
    later = range(config.block + 1, n_layers)
    group = lambda g: slice(g * head_dim, (g + 1) * head_dim)                           # noqa: E731
    kl_rows, head_rows, kv_rows, token_rows = [], [], [], []
    for kind, windows in prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1).items():
        tokens = windows[:, :-1]
        values: dict[tuple[str, int], torch.Tensor] = {}                               # (run, layer) -> (B, T, KV·h)

        def keep(name: str, layer: int):
            def hook(mod, inputs, output):
                values[(name, layer)] = output.detach().clone()
            return hook

        def capture(name: str, extra=()):
            handles = [layers[l].self_attn.v_proj.register_forward_hook(keep(name, l)) for l in later]
            handles += [attach() for attach in extra]
            return handles

        patterns: dict[int, torch.Tensor] = {}

        def take_pattern(pattern, info):
            patterns[info.layer] = pattern.detach().clone()

        handles = capture("clean")
        try:
            reference = log_probs_with(model, tokens, [])
        finally:
            for h in handles:
                h.remove()
        round_0 = lambda: rounded_at(down, rounded, slice(0, 1))                          # noqa: E731
        handles = capture("rounded", [round_0])
        try:
            with hooks(model, [(f"blocks.{l}.attn.hook_pattern", take_pattern) for l in config.layers]):
                model(tokens)
        finally:
            for h in handles:
                h.remove()
        delta = {l: (values[("clean", l)][:, 0] - values[("rounded", l)][:, 0]).unflatten(-1, (n_kv, head_dim))
                 for l in later}                                                       # layer -> (B, KV, h)

        def restore_values(layer: int, at: slice) -> list:
            v_proj = layers[layer].self_attn.v_proj

            def attach():
                clean = values[("rounded", layer)][:, 0].clone()
                clean[:, at] = values[("clean", layer)][:, 0, at]
                return keep_position_0(v_proj, clean)
            return [round_0, attach]

        def kl_of(hooks_: list, hf_hooks: list = ()) -> float:
            with hooks(model, hf_hooks):
                log_q = log_probs_with(model, tokens, hooks_)
            return float((reference.exp() * (reference - log_q)).sum(-1).mean())

        base = kl_of([round_0])
        kl_rows.append({"kind": kind, "layer": -1, "unit": "none restored", "head": -1, "kl": base})
        for layer in config.layers:
            kl_rows.append({"kind": kind, "layer": layer, "unit": "layer", "head": -1,
                            "kl": kl_of(restore_values(layer, slice(None)))})
        for layer, g in itertools.product(later, range(n_kv)):
            kl_rows.append({"kind": kind, "layer": layer, "unit": "key/value head", "head": g,
                            "kl": kl_of(restore_values(layer, group(g)))})
        for layer, h in itertools.product(config.layers, range(n_heads)):
            g = int(kv_of[h])
            kl_rows.append({"kind": kind, "layer": layer, "unit": "query head", "head": h,
                            "kl": kl_of([round_0], [add_back(layer, patterns[layer], delta[layer], h, g)])})

        for layer in config.layers:
            w_o = layers[layer].self_attn.o_proj.weight.unflatten(1, (n_heads, head_dim))  # (d, H, h)
            clean_v = values[("clean", layer)].unflatten(-1, (n_kv, head_dim))         # (B, T, KV, h)
            rounded_v0 = values[("rounded", layer)][:, 0].unflatten(-1, (n_kv, head_dim))
            for h in range(n_heads):
                g = int(kv_of[h])
                write = lambda v: torch.einsum("dk,...k->...d", w_o[:, h], v).norm(dim=-1)     # noqa: E731
                changed = write(delta[layer][:, g])                                    # (B,)
                reads = patterns[layer][:, h, 1:, 0]                                    # (B, T-1)
                head_rows.append({
                    "kind": kind, "layer": layer, "head": h, "kv_head": g,
                    "sink_share": float(reads.mean()),
                    "changed_write": float(changed.mean()),
                    "read_change": float((reads * changed[:, None]).mean()),
                    "sink_write_clean": float(write(clean_v[:, 0, g]).mean()),
                    "sink_write_rounded": float(write(rounded_v0[:, g]).mean()),
                    "other_write": float(write(clean_v[:, 1:, g]).mean())})
            for g in range(n_kv):
                d_g = delta[layer][:, g]                                               # (B, h)
                kv_rows.append({"kind": kind, "layer": layer, "kv_head": g,
                                "delta_cosine": mean_pairwise_cosine(d_g),
                                "delta_over_value": float((d_g.norm(dim=-1) / clean_v[:, 0, g].norm(dim=-1)).mean())})
        heads_kl = pd.DataFrame([r for r in kl_rows if r["kind"] == kind and r["unit"] == "query head"])
        for layer in config.layers:
            h = int(heads_kl[heads_kl.layer == layer].set_index("head").kl.idxmin())   # restoring it removes most
            w_o = layers[layer].self_attn.o_proj.weight[:, h * head_dim:(h + 1) * head_dim]   # (d, h)
            logits = direct_logits(model, w_o @ -delta[layer][:, int(kv_of[h])].mean(0))       # rounded − clean
            for direction, ids in (("raised", logits.topk(config.top_k).indices),
                                   ("lowered", (-logits).topk(config.top_k).indices)):
                token_rows += [{"kind": kind, "layer": layer, "head": h, "direction": direction, "rank": rank + 1,
                                "token": tokenizer.decode([int(i)]), "logit": float(logits[i])}
                               for rank, i in enumerate(ids.tolist())]
    summary = {"model": config.model, "block": config.block, "n_layers": n_layers, "n_heads": n_heads,
               "n_kv_heads": n_kv}
    return RunResult(tables={"restores": pd.DataFrame(kl_rows), "heads": pd.DataFrame(head_rows),
                             "kv_heads": pd.DataFrame(kv_rows), "tokens": pd.DataFrame(token_rows)},
                     summary=summary, seed=0)


register(Experiment(
    name="quant_first_token_heads",
    title="Which heads read the first token's rounded values, and what changes in them?",
    track="Fine-tuning",
    page="experiments/qlora.qmd",
    version=1,
    config_type=FirstTokenHeadsConfig,
    scales={"smoke": {"lab-lm": FirstTokenHeadsConfig(model="lab-lm:smoke", block=0, layers=(1,), n_windows=2,
                                                      seq_len=16, top_k=3)},
            "cpu": {"smollm2": FirstTokenHeadsConfig()}},
    run=run,
    description="SmolLM2's block-11 down projection rounded to NF4 at position 0, with position 0's values restored "
                "from fp32 one key/value head at a time in every later layer, and one query head's reading of them "
                "at a time in layers 18, 20 and 23.",
))
