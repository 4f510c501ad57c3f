"""Is SmolLM2's loud neuron the MLP-side partner of the attention sink?

`ffn_neurons` found one neuron (layer 24, neuron 157) whose activation on code is over 30× any other characterised
neuron's and whose knockout is the only one that costs loss. Its statistics left position 0 out, the token every
later head parks attention on. Massive activations in LLMs (Sun et al. 2024) sit at the first token and act as the
sink's key; this experiment asks whether this neuron is part of that. On the same prose and code windows as
`ffn_neurons` it records:

- **positions**: the neuron's mean activation and mean |activation| at every position, position 0 included;
- **stream**: per layer, the residual stream's norm at position 0 against the median of the other positions, and the
  largest single component at position 0 (Sun et al.'s "massive activation");
- **sink**: every head after the neuron's layer, its mean attention from positions 1.. to position 0, clean and with
  the neuron zeroed (at every position, or at position 0 only);
- **knockouts**: the mean next-token loss change from zeroing the neuron at every position, at position 0 only and
  at positions 1.. only;
- **writes**: the tokens whose logits the neuron's output direction (its W_down column, through the final norm's
  gain and the unembedding) raises and lowers most, and **top tokens**: where its activation is largest in size.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..interp.hf_hooks import HookInfo, decoder_parts, run_with_cache
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import check_ranges, one_of
from .ffn_neurons import KINDS, snippet, token_losses
from .registry import Experiment, RunContext, register


@dataclass(frozen=True)
class MassiveNeuronConfig:
    model: str = "smollm2-135m"
    layer: int = 24                  # the loud neuron `ffn_neurons` found
    neuron: int = 157
    n_windows: int = 48              # windows per kind of text: `ffn_neurons`' own
    seq_len: int = 64
    top_k: int = 12                  # top tokens (by |activation|) and logit writes kept, each way
    context: int = 10                # tokens of text shown before a top token

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len", "top_k", "context"), nonneg_int=("layer", "neuron"),
                     rules={"model": one_of("smollm2-135m", "lab-lm", "lab-lm:smoke")})


def zero_at(index: int | list[int] | None, positions: slice):
    """A hook function that zeroes one channel (`index`), a list of channels, or all of it (None) of an activation at
    the given positions: neurons on `mlp.hook_post`, a block's whole write on `hook_mlp_out`."""
    def hook(value: torch.Tensor, info: HookInfo) -> torch.Tensor:
        value = value.clone()
        if index is None:
            value[:, positions] = 0
        else:
            value[:, positions, index] = 0
        return value
    return hook


KNOCKOUTS = {"everywhere": slice(None), "position 0 only": slice(0, 1), "positions 1.. only": slice(1, None)}


def sink_share(cache: dict[str, torch.Tensor], layers: range) -> dict[tuple[int, int], float]:
    """(layer, head) -> mean attention from queries 1.. to key 0 (position 0 itself, which can only attend there,
    left out)."""
    out = {}
    for layer in layers:
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]                            # (B, H, T, T)
        for head, share in enumerate(pattern[:, :, 1:, 0].mean((0, 2)).tolist()):
            out[layer, head] = share
    return out


def direct_logits(model, write: torch.Tensor) -> torch.Tensor:
    """(V,) logits a write (d,) to the last stream raises directly: scaled by the final RMSNorm's gain and read by
    the unembedding (the norm's division by the stream's size, the same for every logit, left out)."""
    _, _, norm = decoder_parts(model)
    return model.get_output_embeddings().weight @ (write * norm.weight)


def logit_writes(model, tokenizer, layer: int, neuron: int, top_k: int) -> pd.DataFrame:
    """The tokens whose logits one unit of the neuron's activation raises and lowers most, directly: its W_down
    column scaled by the final RMSNorm's gain, read by the unembedding (the norm's division by the stream's size
    left out, which scales every logit alike)."""
    _, blocks, _ = decoder_parts(model)
    with torch.no_grad():
        logits = direct_logits(model, blocks[layer].mlp.down_proj.weight[:, neuron])      # (V,)
    rows = []
    for direction, ids in (("raised", logits.topk(top_k).indices), ("lowered", (-logits).topk(top_k).indices)):
        rows += [{"direction": direction, "rank": rank + 1, "token": tokenizer.decode([int(i)]),
                  "logit_per_unit": float(logits[i])} for rank, i in enumerate(ids.tolist())]
    return pd.DataFrame(rows)


def run(config: MassiveNeuronConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)
    n_layers = model.config.num_hidden_layers
    later = range(config.layer + 1, n_layers)
    texts = prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1)     # {kind: (B, T + 1)}
    post, keep = f"blocks.{config.layer}.mlp.hook_post", {f"blocks.{l}.attn.hook_pattern" for l in later}
    streams = {f"blocks.{l}.hook_resid_post" for l in range(n_layers)}
    position_rows, stream_rows, sink_rows, knockout_rows, top_rows = [], [], [], [], []
    for kind in KINDS:
        tokens, targets = texts[kind][:, :-1], texts[kind][:, 1:]                          # (B, T)
        with torch.no_grad():
            logits, cache = run_with_cache(model, tokens, lambda n: n == post or n in keep or n in streams)
        clean_loss = token_losses(logits, targets)                                        # (B, T)
        act = cache[post][..., config.neuron]                                             # (B, T)
        position_rows += [{"kind": kind, "position": p, "mean": float(act[:, p].mean()),
                           "mean_abs": float(act[:, p].abs().mean())} for p in range(act.shape[1])]
        for l in range(n_layers):
            norms = cache[f"blocks.{l}.hook_resid_post"].norm(dim=-1)                      # (B, T)
            first = cache[f"blocks.{l}.hook_resid_post"][:, 0]                             # (B, d)
            biggest = first.abs().mean(0)                                                 # (d,) over windows
            stream_rows.append({"kind": kind, "layer": l, "first_norm": float(norms[:, 0].median()),
                                "other_norm": float(norms[:, 1:].median()),
                                "first_max_component": float(biggest.max()), "component": int(biggest.argmax())})
        clean_sink = sink_share(cache, later)
        for name, positions in KNOCKOUTS.items():
            hook = [(post, zero_at(config.neuron, positions))]
            with torch.no_grad():
                knocked_logits, knocked = run_with_cache(model, tokens, lambda n: n in keep, fwd_hooks=hook)
            delta = token_losses(knocked_logits, targets) - clean_loss                    # (B, T)
            knockout_rows.append({"kind": kind, "knockout": name, "delta_loss": float(delta.mean()),
                                  "delta_loss_after_0": float(delta[:, 1:].mean())})
            if name != "positions 1.. only":
                sink_rows += [{"kind": kind, "knockout": name, "layer": l, "head": h, "clean": share,
                               "knocked": shared} for (l, h), share in clean_sink.items()
                              for shared in [sink_share(knocked, range(l, l + 1))[l, h]]]
        flat = act[:, 1:].abs().flatten()
        for rank, index in enumerate(flat.topk(config.top_k).indices.tolist()):
            window, position = divmod(index, act.shape[1] - 1)
            before, token = snippet(tokenizer, tokens[window], position + 1, config.context)
            top_rows.append({"kind": kind, "rank": rank + 1, "activation": float(act[window, position + 1]),
                             "before": before, "token": token})
    summary = {"n_layers": n_layers, "n_heads": model.config.num_attention_heads,
               "tokens_per_kind": config.n_windows * config.seq_len}
    return RunResult(tables={"positions": pd.DataFrame(position_rows), "stream": pd.DataFrame(stream_rows),
                             "sink": pd.DataFrame(sink_rows), "knockouts": pd.DataFrame(knockout_rows),
                             "writes": logit_writes(model, tokenizer, config.layer, config.neuron, config.top_k),
                             "top_tokens": pd.DataFrame(top_rows)},
                     summary=summary)


register(Experiment(
    name="massive_neuron",
    title="SmolLM2's loud neuron and the attention sink: position 0, the stream, the late heads, knockouts",
    track="Representations",
    page="experiments/neurons-and-values.qmd",
    version=1,
    config_type=MassiveNeuronConfig,
    scales={"smoke": {"lab-lm": MassiveNeuronConfig(model="lab-lm:smoke", layer=0, neuron=3, n_windows=3, seq_len=12,
                                                    top_k=3, context=4)},
            "cpu": {"smollm2": MassiveNeuronConfig()}},
    run=run,
    description="SmolLM2's L24.157 at every position including the first, the stream's first-token norm per layer, the "
                "later heads' attention to position 0 with the neuron zeroed, knockouts by position, and its logit writes.",
))
