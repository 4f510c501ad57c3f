"""Which of SmolLM2's MLP neurons matter: every neuron of a layer ranked by what its knockout costs.

`ffn_neurons` chose neurons by how differently they fire on code and prose, and of those only one knockout mattered.
This experiment ranks every neuron of the chosen layers instead. A true knockout of each of 1,536 neurons per layer
would take a forward pass per neuron, so the ranking uses the linear estimate of the knockout's cost, attribution
patching (Nanda 2023; Kramár et al. 2024): zeroing activation a changes the loss by about −a · ∂L/∂a, summed over
positions, all neurons at once from one backward pass. The estimate is then checked where it counts: the neurons
it ranks highest, and as many random ones, are knocked out for real (set to 0 at every position, as on the
neurons page). Loss is the mean next-token loss at positions 1.. of windows of prose and of code, averaged over
the two kinds.

Stored, small: per layer the estimate's quantiles and its top neurons; per tested neuron the estimate, the true
cost per kind and how loud it is (its largest |activation| and that size's rank in its layer, its mean |activation|
at position 0 and elsewhere); for the costliest tested neurons, their top-activating tokens with the text before.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..interp.hf_hooks import hooks, run_with_hooks
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import NONNEG_INT, check_ranges, one_of
from .ffn_neurons import KINDS, MODELS, snippet, token_losses, zero_neuron
from .registry import Experiment, RunContext, register

QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)


@dataclass(frozen=True)
class KnockoutConfig:
    model: str = "smollm2-135m"
    n_windows: int = 16                             # windows per kind of text
    seq_len: int = 64
    layers: tuple[int, ...] = (3, 10, 11, 17, 24)   # `ffn_neurons`' layers, and 11 (the first token's writers)
    tested_top: int = 12                            # neurons per layer knocked out for real, by the estimate's rank
    tested_random: int = 12                         # and as many drawn at random from the rest
    kept_estimates: int = 40                        # top neurons per layer whose estimate is stored
    scoped: int = 3                                 # costliest tested neurons per layer given top-activating tokens
    top_k: int = 6                                  # tokens per scoped neuron
    context: int = 10                               # tokens of text shown before each
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len", "tested_top", "kept_estimates", "scoped", "top_k",
                                         "context"), nonneg_int=("tested_random", "seed"),
                     rules={"model": one_of(*MODELS), "layers": NONNEG_INT})


def scored_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss at positions 1.. (position 0, the sink token, apart); tokens (B, T + 1)."""
    return token_losses(logits, tokens[:, 1:])[:, 1:].mean()


def activations_and_estimates(model, tokens: torch.Tensor, layers: list[int]
                              ) -> tuple[float, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """One forward and backward pass on (B, T + 1) tokens: the scored loss, each layer's neuron activations
    (B, T, f) and each neuron's linear knockout estimate Σ_positions −a · ∂L/∂a, (f,)."""
    acts: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(value: torch.Tensor, info) -> None:
            acts[layer] = value
        return hook

    with torch.enable_grad(), hooks(model, [(f"blocks.{l}.mlp.hook_post", keep(l)) for l in layers]):
        loss = scored_loss(model(tokens[:, :-1]).logits, tokens)
        grads = torch.autograd.grad(loss, [acts[l] for l in layers])
    estimates = {l: -(acts[l].detach() * g).sum((0, 1)) for l, g in zip(layers, grads)}
    return float(loss.detach()), {l: a.detach() for l, a in acts.items()}, estimates


def run(config: KnockoutConfig, ctx: RunContext) -> RunResult:
    torch.manual_seed(config.seed)
    model, tokenizer = load_lm(config.model)
    model.eval()
    layers = [layer for layer in config.layers if layer < model.config.num_hidden_layers]
    texts = prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1)     # {kind: (B, T + 1)}
    base, acts, estimates = {}, {}, {}
    for kind, tokens in texts.items():
        base[kind], acts[kind], estimates[kind] = activations_and_estimates(model, tokens, layers)
    generator = torch.Generator().manual_seed(config.seed)
    quantile_rows, estimate_rows, tested_rows, scope_rows = [], [], [], []
    for layer in tqdm(layers, desc="knockouts", disable=None if ctx.progress is None else not ctx.progress):
        estimate = sum(estimates[kind][layer] for kind in KINDS) / len(KINDS)          # (f,) nats, kinds averaged
        both = torch.cat([acts[kind][layer] for kind in KINDS])                        # (2B, T, f)
        loudness = both.abs().amax((0, 1))                                              # (f,) largest |activation|
        loud_rank = loudness.argsort(descending=True).argsort() + 1                     # 1 = the loudest
        quantile_rows += [{"layer": layer, "quantile": q, "estimate": float(estimate.quantile(q))} for q in QUANTILES]
        order = estimate.argsort(descending=True)
        estimate_rows += [{"layer": layer, "rank": i + 1, "neuron": int(n), "estimate": float(estimate[n])}
                          for i, n in enumerate(order[:config.kept_estimates].tolist())]
        top = order[:config.tested_top].tolist()
        rest = order[config.tested_top:]
        drawn = rest[torch.randperm(len(rest), generator=generator)[:config.tested_random]].tolist()
        for role, neurons in (("top by estimate", top), ("random", drawn)):
            for n in neurons:
                cost = {kind: float(scored_loss(run_with_hooks(model, tokens[:, :-1], [
                    (f"blocks.{layer}.mlp.hook_post", zero_neuron(n))]), tokens)) - base[kind]
                        for kind, tokens in texts.items()}
                tested_rows.append({"layer": layer, "neuron": n, "role": role, "estimate": float(estimate[n]),
                                    "cost": sum(cost.values()) / len(cost),
                                    **{f"cost_{kind}": v for kind, v in cost.items()},
                                    "loudness": float(loudness[n]), "loud_rank": int(loud_rank[n]),
                                    "first_abs": float(both[:, 0, n].abs().mean()),
                                    "rest_abs": float(both[:, 1:, n].abs().mean())})
        mine = pd.DataFrame([r for r in tested_rows if r["layer"] == layer])
        for n in mine.nlargest(config.scoped, "cost").neuron.tolist():
            a = torch.cat([acts[kind][layer][:, 1:, n] for kind in KINDS])             # (2B, T - 1), position 0 apart
            for rank, index in enumerate(a.flatten().abs().topk(config.top_k).indices.tolist()):
                window, position = divmod(index, a.shape[1])
                kind = KINDS[window // config.n_windows]
                before, token = snippet(tokenizer, texts[kind][window % config.n_windows], position + 1,
                                        config.context)
                scope_rows.append({"layer": layer, "neuron": n, "rank": rank + 1, "kind": kind,
                                   "activation": float(a.flatten()[index]), "before": before, "token": token})
    summary = {"base_loss": base, "n_neurons": int(acts[KINDS[0]][layers[0]].shape[-1]), "layers": layers}
    return RunResult(tables={"quantiles": pd.DataFrame(quantile_rows), "estimates": pd.DataFrame(estimate_rows),
                             "tested": pd.DataFrame(tested_rows), "neuroscope": pd.DataFrame(scope_rows)},
                     summary=summary, seed=config.seed)


register(Experiment(
    name="neuron_knockouts",
    title="Which of SmolLM2's MLP neurons matter: every neuron of a layer ranked by its knockout's cost",
    track="Representations",
    page="experiments/neurons-and-values.qmd",
    version=1,
    config_type=KnockoutConfig,
    scales={"smoke": {"lab-lm": KnockoutConfig(model="lab-lm:smoke", n_windows=3, seq_len=12, layers=(0, 1),
                                               tested_top=3, tested_random=2, kept_estimates=5, scoped=2, top_k=3)},
            "cpu": {"smollm2": KnockoutConfig()}},
    run=run,
    description="Every MLP neuron of five SmolLM2 layers ranked by the linear estimate of its knockout's cost; the "
                "top and random neurons knocked out for real; the costliest ones' loudness and top tokens.",
))
