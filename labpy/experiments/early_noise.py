"""What do the first 800 steps of dropout on layers 1 and 2 change, that the induction circuit no longer forms once
the dropout is lifted: the weights, or AdamW's memory of the noisy gradients?

In `dropout_lifted` the 3-layer model of seed 0, trained with dropout of 0.05 on layers 1 and 2's attention outputs,
formed the circuit 1500 steps after a lift at 200, 400 or 600 steps, and not in the 3000 steps after a lift at 800
or later, though at step 800 neither it nor the model without dropout copies yet. A lift hands on two things: the
weights, and AdamW's moments (the running means of the gradients and of their squares; with β₂ = 0.999 the second
still weighs every one of the first 800 steps). This trains the run to step 800 twice, with that dropout (the noisy
run: `dropout_lifted`'s `lifted-800-s0` to its lift) and without (the clean run: `attention_depth`'s `three_layer-s0`
to that step), and goes on from a mixture of the two for `steps` more without dropout, on the same batches:

- `clean`: the clean run's weights and moments (the model without dropout, measured as the others are);
- `clean-moments`: the noisy run's weights with the clean run's moments;
- `clean-weights`: the clean run's weights with the noisy run's moments;
- `fresh-adam`: the noisy run's weights with a fresh AdamW (moments zero, the usual warm-up);
- `clean-fresh-adam`: the clean run's weights with a fresh AdamW, for what a fresh optimizer alone does;
- `noisy-long`: the noisy run's weights and moments, which is `lifted-800-s0` step for step, for 9000 steps after
  the lift instead of 3000: does the circuit form later, or not at all?
- `lifted-600`: the noisy run's weights and moments at step 600 (`lifted-600-s0` step for step, which formed the
  circuit), for what the two runs differ in at that lift.

Stored as `dropout_lifted` stores its runs (training curves, head scores and the loss by region at every checkpoint,
steps counted from initialisation), plus what the two runs differ in at the lift: per parameter tensor, how far the
weights and the moments are apart (`lift_state`), and each head's scores and the loss by region (`lift_scores`,
`lift_regions`). No checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import lru_cache

import pandas as pd
import torch

from ..device import lab_device
from ..interp.ambiguity import region_losses, region_masks
from ..interp.heads import head_scores_table
from ..models.toy import build_toy_transformer
from ..store import RunResult
from ..train import TrainSpec, train
from ..validation import require
from .dropout_layers import DropoutLayersConfig
from .dropout_lifted import checkpoint_regions
from .dropout_route import scored_tables, training_fns
from .induction import InductionConfig, fixed_eval_batch, next_token_losses, score_tokens, train_on_repeats
from .registry import Experiment, RunContext, register

OUTSIDE_LAYERS = ("embed.", "pos_embed.", "ln_final.", "unembed.")   # the parameter names outside the blocks


@dataclass(frozen=True)
class EarlyNoiseConfig(DropoutLayersConfig):
    dropout: float = 0.05
    dropout_layers: tuple[int, ...] = (1, 2)
    steps: int = 3000                      # steps trained without dropout after the lift
    checkpoint_every: int = 100
    lifted_at: int = 800                   # the steps both runs train before the mixture is made
    clean_weights: tuple[str, ...] = ()    # name prefixes of the parameters whose weights come from the clean run
    clean_moments: tuple[str, ...] = ()    # ... whose AdamW moments come from it ("" names every parameter)
    fresh_optimizer: bool = False          # start AdamW afresh at the lift (with the warm-up) instead

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self, isinstance(self.lifted_at, int) and self.lifted_at >= max(1, self.warmup_steps), "lifted_at",
                f"is out of range; the lift must come after the warm-up (warmup_steps = {self.warmup_steps}), so the "
                f"run after it keeps the rate it had, e.g. 800")
        names = ("", *OUTSIDE_LAYERS, *(f"blocks.{layer}." for layer in range(self.n_layers)))
        for field in ("clean_weights", "clean_moments"):
            bad = [p for p in getattr(self, field) if p not in names]
            require(self, not bad, field, f"names {bad}, not a part of the model; use prefixes from {list(names)}")
        require(self, not (self.fresh_optimizer and self.clean_moments), "clean_moments",
                "must be empty when fresh_optimizer is set: a fresh AdamW keeps no moments from either run")

    def dropout_on(self, step: int) -> bool:
        return step < self.lifted_at

    def train_spec(self) -> TrainSpec:
        """After the lift: no second warm-up when the moments are handed on (the runs are past theirs)."""
        return replace(super().train_spec(), warmup_steps=self.warmup_steps if self.fresh_optimizer else 0)

    def phase_spec(self) -> TrainSpec:
        """The first `lifted_at` steps, as the runs from initialisation train them."""
        return replace(InductionConfig.train_spec(self), steps=self.lifted_at, eval_every=self.lifted_at,
                       checkpoint_steps=(), resume_every=self.lifted_at)


@dataclass(frozen=True)
class LiftState:
    """A run at the lift: its weights (fp32) and AdamW's state_dict."""
    weights: dict[str, torch.Tensor]
    optimizer: dict


@lru_cache(maxsize=2)
def state_at_lift(config: EarlyNoiseConfig, noisy: bool) -> LiftState:
    """The model after the first `lifted_at` steps, with the config's dropout (noisy) or without. Kept for the next
    config: every config of a scale shares the two runs, which differ only after the lift."""
    model = build_toy_transformer(config.model_config(), seed=config.seed)
    batch_fn, loss_fn = training_fns(config, dropout_on=config.dropout_on if noisy else lambda step: False)
    log = train(model, batch_fn, loss_fn, config.phase_spec(), progress=None, device=lab_device(),
                desc=f"early noise: {'noisy' if noisy else 'clean'} run to step {config.lifted_at}")
    return LiftState({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}, log.optimizer_state)


def phase_key(config: EarlyNoiseConfig) -> EarlyNoiseConfig:
    """The config (or a variant's) as a plain EarlyNoiseConfig with every field that acts only after the lift reset,
    so configs share their two runs."""
    before = {f.name: getattr(config, f.name) for f in fields(EarlyNoiseConfig)}
    return EarlyNoiseConfig(**{**before, "steps": EarlyNoiseConfig.steps, "clean_weights": (), "clean_moments": (),
                               "fresh_optimizer": False})


def _takes(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name.startswith(prefix) for prefix in prefixes)


def parameter_names(config: EarlyNoiseConfig) -> list[str]:
    """The trained parameters' names in AdamW's order (one group: `train` makes one when no lr_scales are set)."""
    return [name for name, p in build_toy_transformer(config.model_config(), seed=0).named_parameters()
            if p.requires_grad]


def mixed_weights(noisy: LiftState, clean: LiftState, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {name: (clean if _takes(name, prefixes) else noisy).weights[name] for name in noisy.weights}


def mixed_moments(noisy: LiftState, clean: LiftState, prefixes: tuple[str, ...], names: list[str]) -> dict:
    """AdamW's state_dict with each parameter's moments from the clean run where its name has a prefix named."""
    require_one_group(noisy.optimizer, names)
    state = {i: (clean if _takes(name, prefixes) else noisy).optimizer["state"][i] for i, name in enumerate(names)}
    return {"state": state, "param_groups": noisy.optimizer["param_groups"]}


def require_one_group(optimizer_state: dict, names: list[str]) -> None:
    ids = [i for group in optimizer_state["param_groups"] for i in group["params"]]
    if ids != list(range(len(names))):
        raise ValueError(f"the optimizer state has parameter ids {ids[:5]}…, not 0..{len(names) - 1} in one group; "
                         "mixing moments by name needs train's single parameter group (no lr_scales)")


def lift_state(noisy: LiftState, clean: LiftState, names: list[str]) -> pd.DataFrame:
    """Per parameter tensor at the lift: how far the noisy run's weights are from the clean run's (relative to the
    clean run's norm), and the ratio of the noisy run's mean |m| and mean √v (AdamW's moments) to the clean run's."""
    rows = []
    for i, name in enumerate(names):
        w_noisy, w_clean = noisy.weights[name].double(), clean.weights[name].double()
        m_noisy, m_clean = (s.optimizer["state"][i] for s in (noisy, clean))
        rows.append({"parameter": name, "weight_norm": w_clean.norm().item(),
                     "weight_change": ((w_noisy - w_clean).norm() / w_clean.norm()).item(),
                     "m_ratio": (m_noisy["exp_avg"].abs().mean() / m_clean["exp_avg"].abs().mean()).item(),
                     "sqrt_v_ratio": (m_noisy["exp_avg_sq"].sqrt().mean()
                                      / m_clean["exp_avg_sq"].sqrt().mean()).item()})
    return pd.DataFrame(rows)


def lift_tables(config: EarlyNoiseConfig, noisy: LiftState, clean: LiftState) -> dict[str, pd.DataFrame]:
    """Each head's scores and the loss by region of both runs at the lift (column `run`: noisy or clean)."""
    probes, batch = score_tokens(config), fixed_eval_batch(config)
    masks = region_masks(batch)
    scores, regions = [], []
    for run, state in (("noisy", noisy), ("clean", clean)):
        model = build_toy_transformer(config.model_config(), seed=config.seed)
        model.load_state_dict(state.weights)
        scores.append(head_scores_table(model, probes, config.score_half).assign(run=run))
        with torch.no_grad():
            losses = region_losses(next_token_losses(model, batch.tokens), masks)
        regions += [{"run": run, "region": region, "loss": loss} for region, loss in losses.items()]
    return {"lift_scores": pd.concat(scores, ignore_index=True), "lift_regions": pd.DataFrame(regions)}


def train_on_from(config: EarlyNoiseConfig, ctx: RunContext, weights: dict[str, torch.Tensor], moments: dict | None,
                  batch_fn=None) -> RunResult:
    """Train the `steps` after the lift without dropout from `weights` and AdamW's state_dict `moments` (None: a fresh
    AdamW), on the seed's batches (or `batch_fn`'s) from the lift on: the curves, head scores and losses by region at
    every checkpoint, steps counted from initialisation."""
    own_batches, loss_fn = training_fns(config, offset=config.lifted_at)
    result = train_on_repeats(config, ctx, batch_fn=batch_fn or own_batches, loss_fn=loss_fn, initial_state=weights,
                              initial_optimizer_state=moments)
    tables = {**scored_tables(config, result, config.lifted_at),
              "checkpoint_regions": checkpoint_regions(config, result, config.lifted_at)}
    return RunResult(tables=tables, summary={**result.summary, "start_step": config.lifted_at,
                                             "lifted_at": config.lifted_at}, seed=config.seed)


def run(config: EarlyNoiseConfig, ctx: RunContext) -> RunResult:
    noisy, clean = state_at_lift(phase_key(config), True), state_at_lift(phase_key(config), False)
    names = parameter_names(config)
    moments = None if config.fresh_optimizer else mixed_moments(noisy, clean, config.clean_moments, names)
    result = train_on_from(config, ctx, mixed_weights(noisy, clean, config.clean_weights), moments)
    result.tables.update({"lift_state": lift_state(noisy, clean, names), **lift_tables(config, noisy, clean)})
    return result


def _configs(lifted_at: int, steps: int, long_steps: int, **common) -> dict[str, EarlyNoiseConfig]:
    noisy = EarlyNoiseConfig(lifted_at=lifted_at, steps=steps, **common)
    return {"clean": replace(noisy, clean_weights=("",), clean_moments=("",)),
            "clean-moments": replace(noisy, clean_moments=("",)),
            "clean-weights": replace(noisy, clean_weights=("",)),
            "fresh-adam": replace(noisy, fresh_optimizer=True),
            "clean-fresh-adam": replace(noisy, clean_weights=("",), fresh_optimizer=True),
            "noisy-long": replace(noisy, steps=long_steps),
            "lifted-600": replace(noisy, lifted_at=lifted_at * 3 // 4)}


register(Experiment(
    name="early_noise",
    title="What the first 800 noisy steps hand on: the weights or AdamW's moments",
    track="Attention & circuits",
    page="experiments/early-noise.qmd",
    version=1,
    config_type=EarlyNoiseConfig,
    scales={"smoke": _configs(lifted_at=8, steps=30, long_steps=60, warmup_steps=4, eval_every=10, eval_batch=32,
                              score_batch=8, checkpoint_every=10),
            "cpu": _configs(lifted_at=800, steps=3000, long_steps=9000)},
    run=run,
    description="attention_depth's 3-layer model (seed 0) trained 800 steps with dropout of 0.05 on layers 1 and "
                "2's attention outputs and 800 without, then on without dropout from the one's weights with the "
                "other's AdamW moments (or a fresh AdamW), and the noisy run for 9000 steps (and lifted at 600): "
                "head scores and the loss by region at every checkpoint, and what the two runs differ in at the lift.",
))
