"""Learning-rate sweep: a small lab LM trained from scratch at many learning rates, several seeds each.

Run (one store entry per learning rate, each holding every seed): the same data order and, per seed, the same
initial weights at every learning rate, so the learning rate is the only thing that changes. A short budget
(warm-up, then cosine) on a smaller config than the lab LM keeps the whole sweep within minutes. Extra entries
repeat the highest learning rates without warm-up. A run whose loss turns non-finite is recorded as diverged
at that step (not an error). Analysis (`lr_sweep_analysis.py`): final held-out loss against learning rate,
where training diverges.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd
import torch

from ..models.lab_lm import build_lab_lm, lab_lm_config, lm_loss, mean_loss
from ..store import RunResult
from ..tasks.corpus import (EOS, VAL_FRACTION, encode, eval_windows, lm_batch_fn, ngram_cross_entropy,
                            ngram_entropy, pydoc_text, split_ids, stdlib_docstrings, train_tokenizer)
from ..device import lab_device
from ..train import TrainSpec, train
from ..validation import check_ranges, int_at_least, one_of, require
from .registry import Experiment, RunContext, register

SWEEP_LRS = (1e-5, 3e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2)
# Added after the first sweep showed no divergence up to 5e-2 (same configs, so the earlier entries stand):
HIGH_LRS = (1e-1, 2e-1, 5e-1, 1.0)
NO_WARMUP_LRS = (2e-3, 5e-3, 1e-2, 2e-2)
CURVE_EVERY = 5   # keep every 5th training-loss row: the store holds curves, not every step
MIN_VOCAB = 258   # the byte-level BPE's 256 byte symbols, EOS and at least one merge


@dataclass(frozen=True)
class SweepConfig:
    lr: float = 1e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    vocab_size: int = 1024
    hidden_size: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    intermediate_size: int = 192
    docstrings: bool = True
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 200
    warmup_steps: int = 20
    schedule: str = "cosine"
    weight_decay: float = 0.1
    eval_every: int = 50
    eval_tokens: int = 8192

    def __post_init__(self) -> None:
        check_ranges(self, positive=("lr",), nonneg_int=("seeds", "warmup_steps"), nonempty=("seeds",),
                     positive_int=("hidden_size", "n_layers", "n_heads", "n_kv_heads", "intermediate_size",
                                   "seq_len", "batch_size", "steps", "eval_every", "eval_tokens"),
                     nonneg=("weight_decay",),
                     rules={"vocab_size": int_at_least(MIN_VOCAB), "schedule": one_of("constant", "cosine")})
        require(self, self.n_heads % self.n_kv_heads == 0, "n_heads",
                f"is out of range; it must be a multiple of n_kv_heads = {self.n_kv_heads} (grouped-query attention)")
        require(self, self.hidden_size % self.n_heads == 0, "hidden_size",
                f"is out of range; it must be a multiple of n_heads = {self.n_heads}")

    def hf_config(self):
        """The sweep model's HF config (a small lab LM)."""
        return lab_lm_config(self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.n_layers,
                             num_attention_heads=self.n_heads, num_key_value_heads=self.n_kv_heads,
                             intermediate_size=self.intermediate_size)

    def build_model(self, seed: int) -> torch.nn.Module:
        """The sweep model, initialised by `seed` (a variant config may change the architecture here)."""
        return build_lab_lm(self.hf_config(), seed)

    def train_spec(self, seed: int, **changes) -> TrainSpec:
        """The sweep's training spec for one seed; `changes` override its fields (another rate, length, warm-up)."""
        spec = TrainSpec(steps=self.steps, lr=self.lr, warmup_steps=self.warmup_steps, schedule=self.schedule,
                         weight_decay=self.weight_decay, eval_every=self.eval_every, seed=seed, resume_every=10**9)
        return dataclasses.replace(spec, **changes)

    def data(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(training ids, held-out windows (N, seq_len + 1) on `device`): the corpus every run of a sweep shares."""
        train_ids, val_ids = _corpus(self.vocab_size, self.docstrings)
        return train_ids, eval_windows(val_ids, self.seq_len, self.eval_tokens).to(device)


@lru_cache(maxsize=2)
def sweep_tokenizer(vocab_size: int, docstrings: bool):
    """The sweep corpus's BPE (deterministic, so every caller gets the same one); cached, since training it takes
    seconds."""
    docs = stdlib_docstrings() if docstrings else ""
    return train_tokenizer(pydoc_text() + ("\n\n" + docs if docs else ""), vocab_size)


@lru_cache(maxsize=2)
def _corpus(vocab_size: int, docstrings: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) ids; cached, since every learning rate of a sweep shares them."""
    pydoc = pydoc_text()
    docs = stdlib_docstrings() if docstrings else ""
    tokenizer = sweep_tokenizer(vocab_size, docstrings)
    parts = [encode(tokenizer, pydoc)]
    if docs:
        parts += [torch.tensor([tokenizer.convert_tokens_to_ids(EOS)]), encode(tokenizer, docs)]
    return split_ids(torch.cat(parts), VAL_FRACTION)


def nonfinite_step(err: FloatingPointError) -> float:
    """The step at which `labpy.train` found a non-finite loss: its `TrainingDivergedError.step`, or for a bare
    FloatingPointError the step its message names ('loss became nan at step 12 (lr=...)')."""
    step = getattr(err, "step", None)
    return float(step) if step is not None else float(str(err).split(" at step ")[1].split(" ")[0])


def run(config: SweepConfig, ctx: RunContext) -> RunResult:
    device = lab_device()
    train_ids, val = config.data(device)                                               # val (N, T+1)
    curves, evals, rows = [], [], []
    for seed in config.seeds:
        model = config.build_model(seed)
        spec = config.train_spec(seed)
        batch_fn = lm_batch_fn(train_ids, config.batch_size, config.seq_len, seed)
        diverged_at = math.nan
        try:
            log = train(model, batch_fn, lm_loss, spec, eval_fn=lambda m: {"val_loss": mean_loss(m, val)},
                        progress=ctx.progress, desc=f"{ctx.label} seed {seed}", device=device)
            steps, seed_evals = log.steps, log.evals
        except FloatingPointError as err:  # non-finite loss: the run diverged; keep what it did
            diverged_at = nonfinite_step(err)
            steps, seed_evals = pd.DataFrame(columns=["step", "loss", "lr", "grad_norm"]), pd.DataFrame()
        curves.append(steps[steps.step % CURVE_EVERY == 0].assign(seed=seed))
        if len(seed_evals):
            evals.append(seed_evals[["step", "val_loss", "update_to_weight"]].assign(seed=seed))
        final_val = float(seed_evals.val_loss.iloc[-1]) if len(seed_evals) else math.nan
        losses = steps.loss.astype(float)
        rows.append({"seed": seed, "final_val_loss": final_val,
                     "final_train_loss": float(losses.tail(10).mean()) if len(losses) else math.nan,
                     "initial_loss": float(losses.iloc[0]) if len(losses) else math.nan,
                     "max_loss_after_warmup": float(losses.iloc[config.warmup_steps:].max()) if len(losses) else math.nan,
                     "max_grad_norm": float(steps.grad_norm.max()) if len(steps) else math.nan,
                     "nonfinite_at_step": diverged_at})
    per_seed = pd.DataFrame(rows)
    summary = {"lr": config.lr, "warmup_steps": config.warmup_steps, "n_params": sum(p.numel() for p in model.parameters()),
               "uniform_loss": math.log(config.vocab_size), "mean_final_val_loss": float(per_seed.final_val_loss.mean()),
               "tokens_seen": config.steps * config.batch_size * config.seq_len}
    return RunResult(tables={"seeds": per_seed, "curves": pd.concat(curves, ignore_index=True),
                             "evals": pd.concat(evals, ignore_index=True) if evals else pd.DataFrame()},
                     summary=summary, seed=config.seeds[0])


def label(lr: float, warmup: bool = True) -> str:
    return f"{'' if warmup else 'nowarm_'}lr_{lr:.0e}"


def _scale(**common) -> dict[str, SweepConfig]:
    configs = {label(lr): SweepConfig(lr=lr, **common) for lr in SWEEP_LRS + HIGH_LRS}
    configs |= {label(lr, warmup=False): SweepConfig(lr=lr, **{**common, "warmup_steps": 0}) for lr in NO_WARMUP_LRS}
    return configs


SMOKE = dict(seeds=(0, 1), vocab_size=300, hidden_size=16, n_layers=1, intermediate_size=32, docstrings=False,
             seq_len=16, batch_size=4, steps=12, warmup_steps=3, eval_every=6, eval_tokens=256)

register(Experiment(
    name="lr_sweep",
    title="Learning-rate sweep of a small lab LM trained from scratch",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=SweepConfig,
    scales={"smoke": {k: v for k, v in _scale(**SMOKE).items() if k in (label(1e-3), label(5e-2), label(1e-2, False))},
            "cpu": _scale()},
    run=run,
    description="Final held-out loss against learning rate (1e-5 to 1), 3 seeds, with and without warm-up.",
))


# ---- the sweep corpus's n-gram yardsticks (the same token units as the sweep's losses) ----

@dataclass(frozen=True)
class CorpusConfig:
    vocab_size: int = 1024
    docstrings: bool = True

    def __post_init__(self) -> None:
        check_ranges(self, rules={"vocab_size": int_at_least(MIN_VOCAB)})


def run_reference(config: CorpusConfig, ctx: RunContext) -> RunResult:
    """Unigram and bigram entropies (plug-in, on the training split) and held-out n-gram losses of the
    sweep's corpus: the levels a frequency-only or previous-token-only model would sit at."""
    train_ids, val_ids = _corpus(config.vocab_size, config.docstrings)
    v = config.vocab_size
    return RunResult(summary={"uniform_loss": math.log(v), "unigram_entropy": ngram_entropy(train_ids, 1),
                              "bigram_entropy": ngram_entropy(train_ids, 2),
                              "unigram_heldout": ngram_cross_entropy(train_ids, val_ids, 1, v),
                              "bigram_heldout": ngram_cross_entropy(train_ids, val_ids, 2, v)})


register(Experiment(
    name="lr_sweep_corpus",
    title="N-gram yardsticks of the learning-rate sweep's corpus",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=CorpusConfig,
    scales={"smoke": {"reference": CorpusConfig(vocab_size=300, docstrings=False)},
            "cpu": {"reference": CorpusConfig()}},
    run=run_reference,
    description="Unigram and bigram entropies of the sweep's tokens (reference lines for the sweep page).",
))
