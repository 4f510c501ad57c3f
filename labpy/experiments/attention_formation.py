"""When do the lab LM's attention heads take their roles? Its training, replayed with the heads scored as it goes.

Run: retrain the lab LM as `lab_lm` trained it (same config, seed, batches and schedule, through the same
`train_spec` and `train_batches`), and at every measured step score every head the way the attention-heads page
scores the final model (`attention_atlas`): previous-token, first-token, local-window and entropy on prose;
induction and duplicate-token on repeated random tokens. It also measures in-context learning on those repeats:
the loss on the second copy against the first. No intermediate weights are stored — the scores are what the
page needs — but the final weights' digest is, so the page can check whether the replay landed on the stored
model's weights (in one environment the loop is deterministic; across library versions it need not be).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import pandas as pd
import torch

from ..device import lab_device, to_device
from ..interp.heads import (duplicate_token_scores, entropy_bits, first_token_scores, induction_scores,
                            local_window_scores, previous_token_scores)
from ..interp.hf_hooks import kv_head_of
from ..models.lab_lm import build_lab_lm, lm_loss, per_token_loss, storable_state
from ..store import RunResult, state_digest
from ..tasks.repeated_tokens import repeated_random_tokens
from ..tasks.source_code import prose_and_code_windows
from ..train import step_generator, train
from ..validation import check_ranges, one_of
from .attention_atlas import EVEN_AT_LEAST_8, patterns_of
from .lab_lm import LabLMConfig, build_corpus, train_batches, train_spec
from .registry import Experiment, RunContext, get_experiment, register

PROSE_SCORES = ("previous_token", "first_token", "local_window", "entropy_bits")
REPEAT_SCORES = ("induction", "duplicate_token")


@dataclass(frozen=True)
class FormationConfig:
    lab_lm_scale: str = "cpu"       # which of `lab_lm`'s configs to replay
    n_windows: int = 16             # windows of prose and of repeated random tokens scored at each measured step
    seq_len: int = 64               # tokens per window (repeated random: two copies of seq_len / 2)
    local_width: int = 4
    seed: int = 0                   # of the repeated random tokens (the model's seed is lab_lm's)

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "local_width"), nonneg_int=("seed",),
                     rules={"lab_lm_scale": one_of("smoke", "cpu"), "seq_len": EVEN_AT_LEAST_8})


def replayed_config(config: FormationConfig) -> LabLMConfig:
    """The `lab_lm` config this run retrains."""
    return get_experiment("lab_lm").configs(config.lab_lm_scale)["base"]


@torch.no_grad()
def head_rows(model: torch.nn.Module, prose: torch.Tensor, repeats: torch.Tensor, config: FormationConfig,
              kv: torch.Tensor) -> list[dict]:
    """One row per head (the attention-heads page's scores) plus one model row (`layer = -1`): the mean loss on
    the first and the second copy of the repeated tokens, their difference being in-context learning.
    `model` is the eager-attention twin of the training model (eager attention returns patterns)."""
    half = config.seq_len // 2
    on_prose, on_repeats = patterns_of(model, prose), patterns_of(model, repeats)        # (L, B, H, T, T)
    scores = {"previous_token": previous_token_scores(on_prose), "first_token": first_token_scores(on_prose),
              "local_window": local_window_scores(on_prose, config.local_width),
              "entropy_bits": entropy_bits(on_prose), "induction": induction_scores(on_repeats, half),
              "duplicate_token": duplicate_token_scores(on_repeats, half)}                # each (L, H)
    losses = per_token_loss(model, repeats)                         # (B, 2*half - 1): target t+1 from position t
    n_layers, n_heads = scores["induction"].shape
    rows = [{"layer": layer, "head": head, "kv_head": int(kv[head]),
             **{name: float(value[layer, head]) for name, value in scores.items()}}
            for layer in range(n_layers) for head in range(n_heads)]
    first, second = losses[:, :half - 1].mean().item(), losses[:, half:].mean().item()  # targets inside each copy
    return rows + [{"layer": -1, "head": -1, "kv_head": -1, "first_copy_loss": first, "second_copy_loss": second}]


def run(config: FormationConfig, ctx: RunContext) -> RunResult:
    lm = replayed_config(config)
    corpus = build_corpus(lm)
    model = build_lab_lm(lm.hf_config(), lm.seed)
    device = lab_device()
    model.to(device)
    half = config.seq_len // 2
    vocab = len(corpus.tokenizer)
    prose = prose_and_code_windows(corpus.tokenizer, config.n_windows, config.seq_len)["prose"]
    repeats = repeated_random_tokens(config.n_windows, half, vocab - 100, step_generator(config.seed, 0)) + 100
    prose, repeats = to_device(prose, device), to_device(repeats, device)
    kv = kv_head_of(model)
    # A twin with eager attention reads the patterns, so the trained model keeps its own attention kernel and
    # with it the stored run's arithmetic.
    twin = copy.deepcopy(model).eval()
    twin.set_attn_implementation("eager")

    def scored() -> list[dict]:
        twin.load_state_dict(model.state_dict())
        return head_rows(twin, prose, repeats, config, kv)

    start = [{"step": 0, **row} for row in scored()]                                     # before any update

    log = train(model, train_batches(lm, corpus), lm_loss, train_spec(lm), work_dir=ctx.work_dir,
                progress=ctx.progress, desc=f"attention_formation {ctx.label}", stats_fn=lambda _: scored(),
                device=device)
    rows = pd.DataFrame(start + log.custom_stats.to_dict("records"))
    heads = rows[rows.layer >= 0].drop(columns=["first_copy_loss", "second_copy_loss"]).reset_index(drop=True)
    icl = rows[rows.layer < 0][["step", "first_copy_loss", "second_copy_loss"]].reset_index(drop=True)
    summary = {"lab_lm_config": dataclasses.asdict(lm), "hf_config": lm.hf_config().to_dict(),
               "final_fp16_digest": state_digest(storable_state(model)), "n_measured_steps": int(icl.step.nunique()),
               "vocab": vocab}
    return RunResult(tables={"heads": heads, "in_context": icl, "steps": log.steps}, summary=summary,
                     seed=lm.seed)


register(Experiment(
    name="attention_formation",
    title="When the lab LM's heads take their roles: head scores over its training",
    track="Attention & circuits",
    page="experiments/attention-heads.qmd",
    version=1,
    config_type=FormationConfig,
    scales={"smoke": {"replay": FormationConfig(lab_lm_scale="smoke", n_windows=2, seq_len=16)},
            "cpu": {"replay": FormationConfig()}},
    run=run,
    description="Retrains the lab LM step for step and scores every head (previous-token, induction, sink, "
                "entropy) and in-context learning on repeated tokens at each measured step.",
))
