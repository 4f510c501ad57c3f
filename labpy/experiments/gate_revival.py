"""Why do the lab LM's dead ReLU gates come back? Weight decay, or the inputs moving under them?

`gate_death` trained the lab LM with ReLU gates: 58 neurons were dead at step 100 (open on under 1% of a fixed
held-out batch's tokens) and none at the end. Two things can reopen a gate g = w · x (no bias): its weights w move,
or its input x (the MLP's normalised residual stream) moves while the layers below learn. AdamW's decoupled decay
only shrinks w, which cannot flip the sign of w · x for any fixed x, so decay alone should reopen nothing; but it
might help along with the rest. This experiment trains the ReLU model again with and without weight decay and,
for every neuron dead at `dead_step`, swaps weights and inputs: the open share of old weights on today's inputs
(did the input move?) against today's weights on the old inputs (did the weights move?).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..store import RunResult
from ..train import StatsContext
from ..validation import POSITIVE_INT, check_ranges, require
from .ffn_neurons import RARELY_OPEN
from .gate_death import GateDeathConfig, retrain
from .registry import Experiment, RunContext, register

REFERENCE_FILE = "dead_gate_reference.pt"


@dataclass(frozen=True)
class GateRevivalConfig:
    weight_decay: float = 0.1                      # AdamW's decoupled decay (the lab LM's own is 0.1)
    smoke: bool = False                            # the smoke lab LM's shape and schedule instead of the cpu one
    dead_step: int = 100                           # the step whose dead neurons are followed
    gate_steps: tuple[int, ...] = (1, 10, 100, 200, 300, 500, 1000, 1500)   # steps at which the gates are measured

    def __post_init__(self) -> None:
        check_ranges(self, nonneg=("weight_decay",), positive_int=("dead_step",), rules={"gate_steps": POSITIVE_INT})
        require(self, self.dead_step in self.gate_steps, "dead_step",
                f"is out of range; it must be one of gate_steps {self.gate_steps}")

    def gate_death(self) -> GateDeathConfig:
        """The ReLU retraining this run repeats, measured at more steps."""
        return GateDeathConfig.measured_at(self.gate_steps, smoke=self.smoke)


def mlp_inputs(model, windows: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each layer's MLP input (the post-attention RMSNorm's output) on `windows` (B, T + 1): {layer: (B*(T-1), d)},
    position 0 left out as in the gate statistics."""
    seen: dict[int, torch.Tensor] = {}
    handles = [layer.mlp.register_forward_pre_hook(lambda m, args, l=l: seen.__setitem__(l, args[0].detach()))
               for l, layer in enumerate(model.model.layers)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(input_ids=windows[:, :-1])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {l: x[:, 1:].reshape(-1, x.shape[-1]).float() for l, x in seen.items()}


def open_share(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(n, d) gate rows, (N, d) inputs -> (n,): the share of the N tokens on which each gate opens (w · x > 0)."""
    return (x @ w.T > 0).float().mean(0)


def swap_rows(ref_w: torch.Tensor, ref_x: torch.Tensor, w: torch.Tensor, x: torch.Tensor, layer: int,
              neurons: torch.Tensor) -> list[dict]:
    """One row per followed neuron: its open share now, with its old weights on today's inputs, and with today's
    weights on the old inputs; and how its weight row moved (cosine to the old row, length ratio)."""
    w_now, w_old = w[neurons].float(), ref_w[neurons].float()                                   # (n, d)
    return [{"layer": layer, "neuron": int(n), "open_now": float(a), "open_old_weights_new_inputs": float(b),
             "open_new_weights_old_inputs": float(c), "weight_cosine": float(cos), "weight_length_ratio": float(r)}
            for n, a, b, c, cos, r in zip(
                neurons.tolist(), open_share(w_now, x), open_share(w_old, x), open_share(w_now, ref_x),
                torch.nn.functional.cosine_similarity(w_now, w_old, dim=1), w_now.norm(dim=1) / w_old.norm(dim=1))]


def revival_probe(config: GateRevivalConfig, work_dir: Path | None):
    """An `extra_stats` for `retrain`: at `dead_step`, note the dead neurons with their gate weights and inputs
    (kept in `work_dir` too, so a resumed run still has them); at every later gate step, the swap rows."""
    path = Path(work_dir) / REFERENCE_FILE if work_dir else None
    reference: dict = {}

    def stats(ctx: StatsContext, windows: torch.Tensor) -> list[dict]:
        if ctx.step not in config.gate_steps or ctx.step < config.dead_step:
            return []
        inputs = mlp_inputs(ctx.model, windows)
        weights = {l: layer.mlp.gate_proj.weight.detach().float().cpu().clone()
                   for l, layer in enumerate(ctx.model.model.layers)}                          # {l: (f, d)}
        inputs = {l: x.cpu() for l, x in inputs.items()}
        if ctx.step == config.dead_step:
            dead = {l: torch.nonzero(open_share(weights[l], inputs[l]) < RARELY_OPEN).flatten() for l in weights}
            reference.update(weights=weights, inputs=inputs, dead=dead)
            if path:
                torch.save(reference, path)
            return []
        if not reference:
            if not (path and path.is_file()):
                raise RuntimeError(f"gate_revival resumed past step {config.dead_step} without its reference "
                                   f"({path}); delete the run's work folder and run it again from step 0")
            reference.update(torch.load(path, weights_only=True))
        return [row for l, neurons in reference["dead"].items() if len(neurons)
                for row in swap_rows(reference["weights"][l], reference["inputs"][l], weights[l], inputs[l], l, neurons)]
    return stats


def run(config: GateRevivalConfig, ctx: RunContext) -> RunResult:
    gd = config.gate_death()
    done = retrain(gd, ctx, weight_decay=config.weight_decay, extra_stats=revival_probe(config, ctx.work_dir))
    swaps = done.extra.astype({"layer": int, "neuron": int}) if len(done.extra) else done.extra
    return RunResult(tables={"evals": done.log.evals, "gates_in_training": done.in_training, "revival": swaps,
                             "gates": done.gates},
                     summary={**done.summary, "dead_step": config.dead_step}, seed=gd.lab_lm().seed)


register(Experiment(
    name="gate_revival",
    title="Why do dead ReLU gates come back? The lab LM's ReLU retraining with and without weight decay",
    track="Representations",
    page="experiments/neurons-and-values.qmd",
    version=1,
    config_type=GateRevivalConfig,
    scales={"smoke": {"relu-no-decay": GateRevivalConfig(weight_decay=0.0, smoke=True, dead_step=10,
                                                         gate_steps=(1, 10, 20, 30))},
            "cpu": {"relu": GateRevivalConfig(), "relu-no-decay": GateRevivalConfig(weight_decay=0.0)}},
    run=run,
    description="The lab LM's ReLU retraining (gate_death) with and without AdamW's weight decay; for each neuron "
                "dead at step 100, its open share later with old weights on new inputs and new weights on old "
                "inputs.",
))
