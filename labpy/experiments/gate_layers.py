"""Why do only the upper layers' ReLU gates die early in the lab LM? Their inputs, and the steps their gates take.

`gate_death` and `gate_revival` found every neuron dead at step 100 in layers 2 and 3 of the ReLU lab LM, none in
layers 0 and 1. A gate g = w · x dies when one step leaves w · x < 0 on (nearly) every token. Adam moves every entry
of every gate row by about the learning rate at first, whatever its gradient, so the layers differ less in their
steps than in their inputs: if a layer's inputs x share one direction (their mean is a large part of each), a step
that turns w against that mean closes the gate everywhere at once. This experiment trains the ReLU model again and,
at many early steps, measures per layer: how much of its MLP inputs' energy lies along their mean, how far the
inputs moved since the last measured step, the gate weights' gradient and Adam step sizes, and, at `align_step`,
the cosine of each gate row with the input mean, for dead and live neurons.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..store import RunResult
from ..train import StatsContext, adam_eps, adam_moments
from ..validation import POSITIVE_INT, check_ranges, one_of, require
from .ffn_neurons import RARELY_OPEN
from .gate_death import ACTIVATIONS, GateDeathConfig, retrain
from .gate_revival import mlp_inputs, open_share
from .registry import Experiment, RunContext, register


@dataclass(frozen=True)
class GateLayersConfig:
    hidden_act: str = "relu"                  # the MLP's gate nonlinearity; "silu" is the lab LM's own, the control
    smoke: bool = False
    gate_steps: tuple[int, ...] = (1, 2, 5, 10, 20, 30, 50, 70, 100, 150, 200, 300, 500, 1000, 1500)
    align_step: int = 100                     # the step at which dead and live gate rows are compared

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("align_step",),
                     rules={"gate_steps": POSITIVE_INT, "hidden_act": one_of(*ACTIVATIONS)})
        require(self, self.align_step in self.gate_steps, "align_step",
                f"is out of range; it must be one of gate_steps {self.gate_steps}")

    def gate_death(self) -> GateDeathConfig:
        return GateDeathConfig.measured_at(self.gate_steps, self.hidden_act, self.smoke)


def mean_share(x: torch.Tensor) -> float:
    """(N, d) -> ‖mean x‖² / mean ‖x‖²: the share of the inputs' energy along their common direction
    (1: every token's input is the same vector; about 1/d for inputs spread evenly in all directions)."""
    return float(x.mean(0).pow(2).sum() / x.pow(2).sum(1).mean())


def layer_probe(config: GateLayersConfig):
    """An `extra_stats` for `retrain`: per layer, input statistics and the gate weights' gradient and Adam step;
    at `align_step`, each neuron's gate-row cosine with the input mean and whether it is dead."""
    previous: dict[int, torch.Tensor] = {}

    def stats(ctx: StatsContext, windows: torch.Tensor) -> list[dict]:
        if ctx.step not in config.gate_steps:
            return []
        inputs = {l: x.cpu() for l, x in mlp_inputs(ctx.model, windows).items()}               # {l: (N, d)}
        rows, eps = [], adam_eps(ctx.optimizer)
        for l, layer in enumerate(ctx.model.model.layers):
            w = layer.mlp.gate_proj.weight
            m_hat, v_hat = adam_moments(ctx.optimizer, w)
            x = inputs[l]
            moved = (float((x - previous[l]).norm(dim=1).mean() / previous[l].norm(dim=1).mean())
                     if l in previous else float("nan"))
            rows.append({"record": "layer", "layer": l, "input_mean_share": mean_share(x), "input_moved": moved,
                         "gate_grad_rms": float(w.grad.pow(2).mean().sqrt()) if w.grad is not None else float("nan"),
                         "gate_adam_step": float(ctx.lr * (m_hat.abs() / (v_hat.sqrt() + eps)).mean())})
            if ctx.step == config.align_step:
                weights = w.detach().float().cpu()                                                     # (f, d)
                cosine = torch.nn.functional.cosine_similarity(weights, x.mean(0)[None], dim=1)        # (f,)
                dead = open_share(weights, x) < RARELY_OPEN
                rows += [{"record": "neuron", "layer": l, "neuron": i, "dead": bool(d), "cos_with_input_mean": float(c)}
                         for i, (d, c) in enumerate(zip(dead.tolist(), cosine.tolist()))]
        previous.clear()
        previous.update(inputs)
        return rows
    return stats


def run(config: GateLayersConfig, ctx: RunContext) -> RunResult:
    gd = config.gate_death()
    done = retrain(gd, ctx, extra_stats=layer_probe(config))

    def record(kind: str) -> pd.DataFrame:
        rows = done.extra[done.extra.record == kind].drop(columns="record")
        return rows.dropna(axis=1, how="all").reset_index(drop=True)

    tables = {"gates_in_training": done.in_training, "layers": record("layer"),
              "neurons": record("neuron").astype({"layer": int, "neuron": int, "dead": bool}), "evals": done.log.evals}
    return RunResult(tables=tables, summary={**done.summary, "align_step": config.align_step}, seed=gd.lab_lm().seed)


register(Experiment(
    name="gate_layers",
    title="Why do only the upper layers' ReLU gates die early? Their inputs and their gates' steps, layer by layer",
    track="Representations",
    page="experiments/neurons-and-values.qmd",
    version=1,
    config_type=GateLayersConfig,
    scales={"smoke": {"relu": GateLayersConfig(smoke=True, gate_steps=(1, 5, 10, 20, 30), align_step=10)},
            # silu (added after the relu run's results): the lab LM's own gates, as the control
            "cpu": {"relu": GateLayersConfig(), "silu": GateLayersConfig(hidden_act="silu")}},
    run=run,
    description="The lab LM's ReLU retraining and its silu control, measured per layer at many early steps: the MLP inputs' share along "
                "their mean, how far they move, the gate weights' gradient and Adam step, and dead rows' alignment.",
))
