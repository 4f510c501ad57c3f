"""Does the gate's nonlinearity decide whether AdamW kills MLP neurons? The lab LM retrained with ReLU gates.

The lab LM (SwiGLU: silu(g) · u, trained with AdamW) has no dead gate: every neuron opens (g > 0) on at least 1%
of tokens (`ffn_neurons`' lab-lm run, neurons-and-values page). The digits classifier on the MLP neurons page,
also trained with Adam, lost many ReLU neurons. One difference is the gradient below zero: silu passes one, ReLU
none, so a ReLU gate pushed negative on every token gets no gradient through its own nonlinearity. This
experiment trains the lab LM again, same corpus, data order, initialisation and AdamW schedule, with only the
MLP's activation changed (`hidden_act`), and measures its gates as `ffn_neurons` does: on the same windows of
prose and code, and on a fixed held-out batch at a few steps during training, to see when neurons die.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch

from ..device import lab_device, to_device
from ..models.lab_lm import build_lab_lm, lm_loss, mean_loss
from ..store import RunResult
from ..tasks.corpus import eval_windows
from ..tasks.source_code import prose_and_code_windows
from ..train import StatsContext, TrainLog, train
from ..validation import POSITIVE_INT, check_ranges, one_of
from .ffn_neurons import capture, flat, gate_rows
from .lab_lm import LabLMConfig, SMOKE, build_corpus, train_batches, train_spec
from .registry import Experiment, RunContext, register

ACTIVATIONS = ("relu", "silu")


@dataclass(frozen=True)
class GateDeathConfig:
    hidden_act: str = "relu"                       # the MLP's gate nonlinearity (the lab LM's own is silu)
    smoke: bool = False                            # the smoke lab LM's shape and schedule instead of the cpu one
    gate_steps: tuple[int, ...] = (1, 10, 100, 500, 1500)   # steps at which the gates are measured in training
    n_windows: int = 48                            # windows per kind of text for the final gate statistics
    seq_len: int = 64

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len"),
                     rules={"hidden_act": one_of(*ACTIVATIONS), "gate_steps": POSITIVE_INT})

    def lab_lm(self) -> LabLMConfig:
        """The lab LM's own config: everything but the activation is the stored model's."""
        return SMOKE if self.smoke else LabLMConfig()

    @classmethod
    def measured_at(cls, gate_steps: tuple[int, ...], hidden_act: str = "relu", smoke: bool = False) -> GateDeathConfig:
        """The retraining measured at `gate_steps`; at smoke size, with few and short windows for the final gates."""
        return cls(hidden_act=hidden_act, smoke=smoke, gate_steps=gate_steps,
                   **({"n_windows": 4, "seq_len": 16} if smoke else {}))


def gate_probe(windows: torch.Tensor, steps: tuple[int, ...]):
    """A `stats_fn`: at `steps`, every layer's gate statistics on the fixed batch `windows` (B, T + 1)."""
    from ..interp.hf_hooks import run_with_cache

    def stats(ctx: StatsContext) -> list[dict]:
        if ctx.step not in steps:
            return []
        model = ctx.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            _, cache = run_with_cache(model, windows[:, :-1], lambda n: n.endswith("mlp.hook_pre"))
        model.train(was_training)
        return [{"step": ctx.step, **gate_rows(flat(cache[f"blocks.{l}.mlp.hook_pre"]), l, "held-out")}
                for l in range(model.config.num_hidden_layers)]                     # position 0 left out
    return stats


@dataclass
class Retrained:
    log: TrainLog
    in_training: pd.DataFrame      # the gate probe's rows: per step and layer, on the held-out batch
    extra: pd.DataFrame            # the rows `extra_stats` returned (empty without it)
    gates: pd.DataFrame            # final gate statistics on prose and code
    summary: dict


def _rows_from(stats: pd.DataFrame, source: str) -> pd.DataFrame:
    """The rows one stats function wrote into the shared log, without the other's columns."""
    rows = stats[stats.source == source].drop(columns="source")
    return rows.dropna(axis=1, how="all").reset_index(drop=True)


def retrain(config: GateDeathConfig, ctx: RunContext, weight_decay: float | None = None,
            extra_stats: Callable[[StatsContext, torch.Tensor], list[dict]] | None = None) -> Retrained:
    """The lab LM trained again with `config.hidden_act` gates (and `weight_decay` instead of its own, if given).
    `extra_stats(ctx, windows)` measures more at every measured step, on the same held-out windows (B, T + 1);
    its rows come back apart from the gate probe's (both go through the training log, so a resumed run keeps
    them)."""
    lab = config.lab_lm()
    corpus = build_corpus(lab)
    hf_config = lab.hf_config()
    hf_config.hidden_act = config.hidden_act
    model = build_lab_lm(hf_config, lab.seed)
    device = lab_device()
    val = to_device(eval_windows(corpus.val, lab.seq_len, lab.eval_tokens), device)        # (N, T + 1)
    spec = train_spec(lab)
    spec = dataclasses.replace(spec, measure_steps=tuple(sorted({*spec.measure_steps, *config.gate_steps})),
                               weight_decay=spec.weight_decay if weight_decay is None else weight_decay)
    probe = gate_probe(val[:16], config.gate_steps)
    stats = probe if extra_stats is None else (
        lambda c: [{"source": "gates", **r} for r in probe(c)] + [{"source": "extra", **r} for r in extra_stats(c, val[:16])])
    log = train(model, train_batches(lab, corpus), lm_loss, spec, eval_fn=lambda m: {"val_loss": mean_loss(m, val)},
                work_dir=ctx.work_dir, progress=ctx.progress, desc=f"{ctx.label or config.hidden_act} gates",
                stats_fn=stats, device=device)
    model = model.cpu().eval()
    texts = prose_and_code_windows(corpus.tokenizer, config.n_windows, config.seq_len + 1)
    gates = pd.DataFrame(capture(model, texts, []).gates)
    summary = {"hidden_act": config.hidden_act, "final_val_loss": float(log.evals.val_loss.iloc[-1]),
               "d_mlp": hf_config.intermediate_size, "n_layers": hf_config.num_hidden_layers,
               "weight_decay": spec.weight_decay}
    if extra_stats is None:
        return Retrained(log, log.custom_stats, pd.DataFrame(), gates, summary)
    return Retrained(log, _rows_from(log.custom_stats, "gates"), _rows_from(log.custom_stats, "extra"), gates, summary)


def run(config: GateDeathConfig, ctx: RunContext) -> RunResult:
    done = retrain(config, ctx)
    return RunResult(tables={"evals": done.log.evals, "gates_in_training": done.in_training, "gates": done.gates},
                     summary=done.summary, seed=config.lab_lm().seed)


register(Experiment(
    name="gate_death",
    title="Does the gate's nonlinearity decide whether AdamW kills neurons? The lab LM with ReLU gates",
    track="Representations",
    page="experiments/neurons-and-values.qmd",
    version=1,
    config_type=GateDeathConfig,
    scales={"smoke": {"relu": GateDeathConfig.measured_at((1, 10, 30), smoke=True)},
            # silu retrains the stored lab LM itself, step for step, so both have gates measured during training
            "cpu": {"relu": GateDeathConfig(), "silu": GateDeathConfig(hidden_act="silu")}},
    run=run,
    description="The lab LM retrained with ReLU gates and, as the control, with its own silu gates, all else equal; "
                "gate open shares during training and after, on prose and code.",
))
