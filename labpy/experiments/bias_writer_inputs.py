"""What keeps the last MLP's bias writers on at every position: a constant input, or a fresh computation?

`last_mlp_bias` found that SmolLM2's last MLP writes roughly the same vector at every position — the output bias
the model lacks — and that two neurons of it, 1479 and 1512, write the largest shares, loud (|activation| near 30)
and steady across positions. A neuron is steady either because what it reads is the same everywhere (a constant
direction of the residual stream) or because it computes the same answer from different contexts. Three
measurements tell the two apart:

- **the mean input**: each neuron's gate and up pre-activations on the mean of its (normed) input, against their
  spread across positions, and the activation the mean input alone gives;
- **a stand-in**: both neurons' activations replaced at every position from 1 on by what the mean input gives,
  against zeroing them and against their mean activation, each scored by the KL from the full model on windows not
  used for the means (if the context-dependent part mattered, a constant would cost as much as zeroing);
- **the writers**: the MLP reads RMSNorm(stream), and the stream is a sum of writes (the embedding, every earlier
  attention and MLP, this block's attention), so at each position a neuron's gate pre-activation splits exactly into
  one term per write, w·(g ⊙ write) / rms. Which writes carry it, and are their terms steady?
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..interp.hf_hooks import run_with_cache, run_with_hooks
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import NONNEG_INT, check_ranges, one_of
from .last_mlp_role import kl
from .registry import Experiment, RunContext, register
from .residual_stream import MODELS


@dataclass(frozen=True)
class BiasWriterInputsConfig:
    model: str = "smollm2-135m"
    neurons: tuple[int, ...] = (1479, 1512)   # last_mlp_bias's two largest writers of the mean write
    n_windows: int = 16                       # per kind; means fit on the first half, scored on the second
    seq_len: int = 128

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len"), nonempty=("neurons",),
                     rules={"model": one_of(*MODELS), "neurons": NONNEG_INT})
        if self.n_windows < 2:
            raise ValueError(f"n_windows={self.n_windows}: the means are fit on half the windows and scored on the "
                             "other half; use n_windows >= 2")


def component_names(layer: int) -> list[str]:
    """The hook points whose outputs add up to block `layer`'s stream between attention and MLP (resid_mid)."""
    return (["hook_embed"] + [f"blocks.{j}.{p}" for j in range(layer) for p in ("hook_attn_out", "hook_mlp_out")]
            + [f"blocks.{layer}.hook_attn_out"])


def set_neurons(neurons: list[int], values: torch.Tensor | None):
    """A `mlp.hook_post` hook setting `neurons` to `values` (len(neurons),) at positions 1.. (zero when None)."""
    def hook(post: torch.Tensor, info) -> torch.Tensor:
        post = post.clone()
        post[:, 1:, neurons] = 0 if values is None else values.to(post.dtype)
        return post
    return hook


def run(config: BiasWriterInputsConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)       # outside no_grad: a missing smoke lab LM is trained here
    model.eval()
    return measure(model, tokenizer, config)


@torch.no_grad()
def measure(model, tokenizer, config: BiasWriterInputsConfig) -> RunResult:
    layer = model.config.num_hidden_layers - 1
    block = model.model.layers[layer]
    neurons = list(config.neurons)
    if max(neurons) >= block.mlp.gate_proj.out_features:
        raise ValueError(f"neurons={config.neurons}: {config.model}'s last MLP has neurons 0–"
                         f"{block.mlp.gate_proj.out_features - 1}")
    gain = block.post_attention_layernorm.weight.float()                                          # (d,)
    eps = block.post_attention_layernorm.variance_epsilon
    w_gate = block.mlp.gate_proj.weight[neurons].float()                                          # (n, d)
    w_up = block.mlp.up_proj.weight[neurons].float()
    act = block.mlp.act_fn
    names = component_names(layer)
    post = f"blocks.{layer}.mlp.hook_post"
    half = config.n_windows // 2
    neuron_rows, stand_in_rows, writer_rows = [], [], []
    for kind, windows in prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1).items():
        fit, score = windows[:half, :-1], windows[half:, :-1]
        _, cache = run_with_cache(model, fit, [*names, post])
        stream = sum(cache[n].float() for n in names)[:, 1:].flatten(0, 1)                       # (N, d) resid_mid
        rms = stream.pow(2).mean(-1, keepdim=True).add(eps).sqrt()                                # (N, 1)
        x = gain * stream / rms                                                                   # (N, d) MLP input
        x_mean = x.mean(0)                                                                        # (d,)
        gate, up = x @ w_gate.T, x @ w_up.T                                                       # (N, n)
        acts = cache[post][:, 1:].flatten(0, 1)[:, neurons].float()                               # (N, n)
        from_mean = act(w_gate @ x_mean) * (w_up @ x_mean)                                        # (n,)
        for i, n in enumerate(neurons):
            neuron_rows.append({
                "kind": kind, "neuron": n,
                "mean_activation": float(acts[:, i].mean()), "activation_spread": float(acts[:, i].std()
                                                                                        / acts[:, i].mean().abs()),
                "activation_from_mean_input": float(from_mean[i]),
                "gate_mean": float(gate[:, i].mean()), "gate_spread": float(gate[:, i].std() / gate[:, i].mean().abs()),
                "up_mean": float(up[:, i].mean()), "up_spread": float(up[:, i].std() / up[:, i].mean().abs()),
                "hook_check": float((act(gate[:, i]) * up[:, i] - acts[:, i]).abs().max() / acts[:, i].abs().max())})
            terms = {name: (gain * cache[name].float()[:, 1:].flatten(0, 1) / rms) @ w_gate[i]      # (N,) each
                     for name in names}
            total_abs = sum(t.mean().abs() for t in terms.values())
            writer_rows += [{"kind": kind, "neuron": n, "component": name, "gate_term": float(t.mean()),
                             "abs_share": float(t.mean().abs() / total_abs),
                             "spread": float(t.std() / t.mean().abs().clamp_min(1e-12))}
                            for name, t in terms.items()]
        del cache

        full = model(score).logits[:, 1:].float().log_softmax(-1).flatten(0, 1)
        stand_ins = {"zeroed": None, "their mean activation": acts.mean(0),
                     "their activation on the mean input": from_mean}
        base = None
        for name, values in stand_ins.items():
            log_q = run_with_hooks(model, score, [(post, set_neurons(neurons, values))])[:, 1:].float()
            divergence = float(kl(full, log_q.log_softmax(-1).flatten(0, 1)).mean())
            base = base if base is not None else divergence
            stand_in_rows.append({"kind": kind, "stand_in": name, "kl": divergence, "share_of_zeroing": divergence / base})
    summary = {"model": config.model, "layer": layer, "neurons": neurons, "n_components": len(names)}
    return RunResult(tables={"neurons": pd.DataFrame(neuron_rows), "stand_ins": pd.DataFrame(stand_in_rows),
                             "writers": pd.DataFrame(writer_rows)}, summary=summary, seed=0)


register(Experiment(
    name="bias_writer_inputs",
    title="What keeps the last MLP's bias writers on: a constant input or a fresh computation?",
    track="Representations",
    page="experiments/residual-stream.qmd",
    version=1,
    config_type=BiasWriterInputsConfig,
    scales={"smoke": {"lab-lm": BiasWriterInputsConfig(model="lab-lm:smoke", neurons=(0, 1), n_windows=4, seq_len=16)},
            "cpu": {"smollm2": BiasWriterInputsConfig()}},
    run=run,
    description="SmolLM2's last-MLP neurons 1479 and 1512: their pre-activations on the mean input, a constant stand-in "
                "for their activations scored by KL, and each earlier write's term in their gate pre-activation.",
))
