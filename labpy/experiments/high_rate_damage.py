"""What does a high-rate phase leave behind that slows the model once the rate is lowered?

`frozen_escape` found the sweep's lr 0.1 model, continued at 5e-3, ending half a nat or more behind a fresh model
given the same steps. This experiment first measures the frozen model against its own initialisation: each kind of
weight's RMS, how many MLP gates never open on held-out text, and how spread out each layer's attention is. Then it
undoes one thing at a time and gives the model `frozen_escape`'s second phase (the same steps at the low rate, the
same batches):

- **weights rescaled**: every weight matrix scaled back to its initial RMS, its direction kept. A step of a given
  size then moves each matrix as far, relative to its size, as at the start. This is not a change of scale alone:
  the tied embedding sets the logits' scale, the query and key weights the attention's sharpness, and the gated MLP
  is not homogeneous, so the rescaled model computes something else too;
- **embedding reset**: the (tied) embedding back to its initial values, everything else kept;
- **all but the embedding reset**: everything back to its initial values except the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..device import lab_device
from ..interp.hf_hooks import run_with_cache
from ..models.lab_lm import MATRIX_KINDS, build_lab_lm, lm_loss, mean_loss, parameter_kind
from ..store import RunResult
from ..tasks.corpus import lm_batch_fn
from ..train import train
from ..validation import check_ranges
from .frozen_escape import PHASE_TWO_SEED, EscapeConfig, spec
from .gradient_sources import weight_rows
from .registry import Experiment, RunContext, register
from .sharpness import eager_attention

EMBEDDING = "model.embed_tokens.weight"
RESETS = ("weights rescaled", "embedding reset", "all but the embedding reset")


@dataclass(frozen=True)
class DamageConfig:
    high_lr: float = 0.1                     # the frozen run and the second phase, as in `frozen_escape`
    low_lr: float = 5e-3
    extra_steps: int = 800
    low_warmup_steps: int = 20
    seeds: tuple[int, ...] = (0, 1, 2)
    smoke: bool = False
    probe_windows: int = 32                  # held-out windows the gates and attention are measured on

    def __post_init__(self) -> None:
        check_ranges(self, positive=("high_lr", "low_lr"), positive_int=("extra_steps", "probe_windows"),
                     nonneg_int=("low_warmup_steps", "seeds"), nonempty=("seeds",))

    def escape(self) -> EscapeConfig:
        return EscapeConfig(high_lr=self.high_lr, low_lr=self.low_lr, extra_steps=self.extra_steps,
                            low_warmup_steps=self.low_warmup_steps, seeds=self.seeds, smoke=self.smoke)


@torch.no_grad()
def reset(model: torch.nn.Module, initial: dict[str, torch.Tensor], how: str) -> None:
    """Undo one thing in place (one of `RESETS`): every weight matrix's scale, the embedding, or everything but the
    embedding."""
    for name, p in model.named_parameters():
        if how == "weights rescaled":
            if parameter_kind(name)[1] in MATRIX_KINDS:
                p.mul_(initial[name].pow(2).mean().sqrt() / p.pow(2).mean().sqrt())
        elif how == "embedding reset":
            if name == EMBEDDING:
                p.copy_(initial[name])
        elif how == "all but the embedding reset":
            if name != EMBEDDING:
                p.copy_(initial[name])
        else:
            raise ValueError(f"reset {how!r}: use one of {RESETS}")


@torch.no_grad()
def diagnosis(model: torch.nn.Module, windows: torch.Tensor, state: str) -> list[dict]:
    """Per kind of weight its RMS (median over layers); per layer the share of MLP gates that never open on
    `windows` (B, T + 1) and the mean entropy of the attention rows (nats, eager attention)."""
    weights = pd.DataFrame(weight_rows(model))
    by_kind = weights.groupby(weights.name.map(lambda n: parameter_kind(n)[1]), sort=False).weight_rms.median()
    rows = [{"state": state, "measure": "weight RMS", "part": kind, "value": float(v)} for kind, v in by_kind.items()]
    with eager_attention(model):                                                        # patterns need it
        _, cache = run_with_cache(model, windows[:, :-1], lambda n: n.endswith(("mlp.hook_pre", "attn.hook_pattern")))
    for layer in range(model.config.num_hidden_layers):
        gates = cache[f"blocks.{layer}.mlp.hook_pre"].flatten(0, 1)                      # (N, f)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, 1:]                   # (B, H, T - 1, T), row 0 apart
        entropy = -(pattern * pattern.clamp_min(1e-12).log()).sum(-1).mean()
        rows += [{"state": state, "measure": "gates never open", "part": f"layer {layer}",
                  "value": float(((gates > 0).sum(0) == 0).float().mean())},
                 {"state": state, "measure": "attention entropy", "part": f"layer {layer}", "value": float(entropy)}]
    return rows


def run(config: DamageConfig, ctx: RunContext) -> RunResult:
    escape = config.escape()
    sweep = escape.sweep()
    device = lab_device()
    train_ids, val = sweep.data(device)                                                 # val (N, T+1)
    probe = val[:config.probe_windows]
    hf_config = sweep.hf_config()
    low = lambda seed: spec(sweep, escape.low_lr, escape.extra_steps, escape.low_warmup_steps, seed)
    evals, diagnoses = [], []
    for seed in escape.seeds:
        model = build_lab_lm(hf_config, seed)
        initial = {n: p.detach().clone() for n, p in model.named_parameters()}
        diagnoses += [{"seed": seed, **row} for row in diagnosis(model, probe, "initialisation")]
        train(model, lm_batch_fn(train_ids, sweep.batch_size, sweep.seq_len, seed), lm_loss,
              spec(sweep, sweep.lr, sweep.steps, sweep.warmup_steps, seed), progress=ctx.progress,
              desc=f"high_rate_damage frozen seed {seed}", device=device)
        diagnoses += [{"seed": seed, **row} for row in diagnosis(model, probe, "frozen")]
        frozen = {n: t.clone() for n, t in model.state_dict().items()}
        for how in RESETS:
            model.load_state_dict(frozen)
            reset(model, initial, how)
            log = train(model, lm_batch_fn(train_ids, sweep.batch_size, sweep.seq_len, PHASE_TWO_SEED + seed),
                        lm_loss, low(seed), eval_fn=lambda m: {"val_loss": mean_loss(m, val)}, progress=ctx.progress,
                        desc=f"high_rate_damage {how} seed {seed}", device=device)
            evals.append(log.evals[["step", "val_loss"]].assign(step=log.evals.step + sweep.steps, arm=how, seed=seed))
    return RunResult(tables={"evals": pd.concat(evals, ignore_index=True), "diagnosis": pd.DataFrame(diagnoses)},
                     summary={"sweep_steps": sweep.steps}, seed=escape.seeds[0])


register(Experiment(
    name="high_rate_damage",
    title="What a high-rate phase leaves behind: the frozen model diagnosed, and one thing undone at a time",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=DamageConfig,
    scales={"smoke": {"lr-0.1": DamageConfig(high_lr=5e-2, extra_steps=12, low_warmup_steps=2, seeds=(0,), smoke=True,
                                             probe_windows=4)},
            "cpu": {"lr-0.1": DamageConfig()}},
    run=run,
    description="The frozen lr 0.1 model's weight RMS, dead gates and attention entropy against its initialisation; "
                "then its weights' scale, its embedding, or all else reset before frozen_escape's second phase.",
))
