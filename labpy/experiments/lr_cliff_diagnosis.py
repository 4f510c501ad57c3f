"""Why does a faster tied embedding keep the hidden matrices off their cliff? The cliff runs diagnosed.

`lr_split_cliff` found that, with the hidden matrices at 2.5e-2, the width-64 model falls off a cliff when its tied
embedding learns at 1e-1 and not at 2e-1, and that the embedding's own rate decides it. This retrains both (and the
1e-1 run untied, which `lr_untied_width` found off the cliff too) and measures each model at its initialisation and
after training: `high_rate_damage`'s diagnosis (each kind of weight's RMS, the MLP gates that never open, the
attention's entropy) and the stream's scales on held-out text: what the embedding puts in, what the layers write on
top of it before the final norm, and the spread of the logits.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..device import lab_device
from ..models.lab_lm import lm_loss, mean_loss
from ..store import RunResult
from ..tasks.corpus import lm_batch_fn
from ..train import train
from .high_rate_damage import diagnosis
from .lr_embedding_split import split_config
from .lr_split_cliff import CLIFF_HIDDEN_LR
from .lr_untied import UntiedConfig
from .lr_width import SMOKE_WIDTHLESS
from .registry import Experiment, RunContext, register

PROBE_WINDOWS = 32                                   # held-out windows the diagnosis reads
# (peak rate, readout tied): the cliff, off it by the embedding's rate, off it untied
DIAGNOSED = {"tied at 1e-1": (1e-1, True), "tied at 2e-1": (2e-1, True), "untied at 1e-1": (1e-1, False)}


@torch.no_grad()
def stream_scales(model: torch.nn.Module, windows: torch.Tensor, state: str) -> list[dict]:
    """On `windows` (B, T + 1): the RMS of the embedded tokens, of what the layers add to them before the final norm,
    and the logits' spread over the vocabulary (standard deviation per position, averaged)."""
    captured = []
    handle = model.model.norm.register_forward_hook(lambda module, args, out: captured.append(args[0]))
    try:
        logits = model(input_ids=windows[:, :-1]).logits.float()                         # (B, T, V)
    finally:
        handle.remove()
    embedded = model.model.embed_tokens(windows[:, :-1])                                 # (B, T, d)
    written = captured[0] - embedded                                                     # (B, T, d)
    rms = lambda x: float(x.pow(2).mean().sqrt())
    return [{"state": state, "measure": measure, "part": "stream", "value": value}
            for measure, value in (("embedding RMS", rms(embedded)), ("layers' writes RMS", rms(written)),
                                   ("writes ÷ embedding", rms(written) / rms(embedded)),
                                   ("logit spread", float(logits.std(-1).mean())))]


def run(config: UntiedConfig, ctx: RunContext) -> RunResult:
    device = lab_device()
    train_ids, val = config.data(device)                                                 # val (N, T+1)
    probe = val[:PROBE_WINDOWS]
    rows, seeds = [], []
    for seed in config.seeds:
        model = config.build_model(seed)
        for row in diagnosis(model, probe, "initialisation") + stream_scales(model, probe, "initialisation"):
            rows.append({"seed": seed, **row})
        log = train(model, lm_batch_fn(train_ids, config.batch_size, config.seq_len, seed), lm_loss,
                    config.train_spec(seed), eval_fn=lambda m: {"val_loss": mean_loss(m, val)},
                    progress=ctx.progress, desc=f"{ctx.label} seed {seed}", device=device)
        for row in diagnosis(model, probe, "trained") + stream_scales(model, probe, "trained"):
            rows.append({"seed": seed, **row})
        seeds.append({"seed": seed, "final_val_loss": float(log.evals.val_loss.iloc[-1])})
    per_seed = pd.DataFrame(seeds)
    return RunResult(tables={"diagnosis": pd.DataFrame(rows), "seeds": per_seed},
                     summary={"mean_final_val_loss": float(per_seed.final_val_loss.mean())}, seed=config.seeds[0])


def _scale(**common) -> dict[str, UntiedConfig]:
    width = common.pop("hidden_size", 64)
    return {name.replace(" ", "_"): split_config(width, lr, CLIFF_HIDDEN_LR / lr, UntiedConfig, tie_readout=tied,
                                                 **common)
            for name, (lr, tied) in DIAGNOSED.items()}


register(Experiment(
    name="lr_cliff_diagnosis",
    title="Why does a faster tied embedding keep the hidden matrices off their cliff?",
    track="Training dynamics",
    page="experiments/learning-rate-width.qmd",
    version=1,
    config_type=UntiedConfig,
    scales={"smoke": _scale(hidden_size=16, **SMOKE_WIDTHLESS), "cpu": _scale()},
    run=run,
    description="The width-64 model with the hidden matrices at 2.5e-2 and the tied embedding at 1e-1 or 2e-1, or "
                "untied at 1e-1: weight RMS, dead gates, attention entropy and the stream's scales before and after.",
))
