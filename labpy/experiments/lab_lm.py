"""The lab language model: a small Qwen2 trained from scratch on Python's own documentation.

Run: train a byte-level BPE on `pydoc_data.topics` + stdlib docstrings, then a Qwen2 (GQA, RoPE, RMSNorm,
gated MLP, tied embeddings) with labpy's training loop. Every eval it scores fixed held-out and training
windows (so the train/held-out gap is measured on equal footing, not from the noisy running loss) and splits
the held-out loss by token frequency and kind. It records Adam's moments per parameter tensor and, at a few
steps, per embedding row (the optimizer-state page). Stored: fp16 weights (`final`), the tokenizer, the HF
config, reference n-gram entropies. It is the base model of the fine-tuning pages (`lab_lm_dir`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pathlib import Path

import pandas as pd
import torch

from ..models.lab_lm import (CHECKPOINT, HF_SUBDIR, LABEL, TOKENIZER_FILE, build_lab_lm, hf_copy_dir, lab_lm_config,
                             lm_loss, mean_loss, per_token_loss, storable_state)
from ..store import WORK_DIR, RunResult, RunStore
from ..tasks.corpus import (EOS, VAL_FRACTION, encode, eval_windows, kinds_in_context, lm_batch_fn,
                            ngram_cross_entropy, ngram_entropy, pydoc_text, split_ids, stdlib_docstrings,
                            token_kinds, train_tokenizer)
from ..device import lab_device, to_cpu, to_device
from ..train import StatsContext, TrainLog, TrainSpec, adam_eps, adam_moments, train
from ..validation import POSITIVE_INT, check_ranges, int_at_least, one_of, require
from .registry import Experiment, RunContext, register, results

FREQUENCY_BANDS = ((0, 100, "top 100"), (100, 500, "rank 100-499"), (500, None, "rank 500+"))


@dataclass(frozen=True)
class LabLMConfig:
    vocab_size: int = 2048
    hidden_size: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    intermediate_size: int = 384
    docstrings: bool = True          # add stdlib docstrings to the pydoc topics (4x the text)
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 1500
    lr: float = 2e-3
    warmup_steps: int = 100
    schedule: str = "cosine"
    weight_decay: float = 0.1
    eval_every: int = 50
    eval_tokens: int = 16384         # targets scored per eval set (held-out, training sample)
    early_steps: tuple[int, ...] = (1, 2, 3, 5, 10, 20, 30, 40)      # extra evals, for a log-step axis
    token_stats_steps: tuple[int, ...] = (1, 10, 100, 500, 1500)    # per-embedding-row Adam statistics
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("hidden_size", "n_layers", "n_heads", "n_kv_heads", "intermediate_size",
                                         "seq_len", "batch_size", "steps", "eval_every", "eval_tokens"),
                     positive=("lr",), nonneg=("weight_decay",), nonneg_int=("warmup_steps", "seed"),
                     rules={"vocab_size": int_at_least(258), "schedule": one_of("constant", "cosine"),
                            "early_steps": POSITIVE_INT, "token_stats_steps": POSITIVE_INT})
        require(self, self.n_heads % self.n_kv_heads == 0, "n_heads",
                f"is out of range; it must be a multiple of n_kv_heads = {self.n_kv_heads} (grouped-query attention)")
        require(self, self.hidden_size % self.n_heads == 0, "hidden_size",
                f"is out of range; it must be a multiple of n_heads = {self.n_heads}")

    def hf_config(self):
        return lab_lm_config(self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.n_layers,
                             num_attention_heads=self.n_heads, num_key_value_heads=self.n_kv_heads,
                             intermediate_size=self.intermediate_size)


@dataclass
class Corpus:
    tokenizer: object
    train: torch.Tensor          # (N_train,) token ids
    val: torch.Tensor            # (N_val,) held-out ids, same mixture of texts as train
    val_pydoc: torch.Tensor      # the held-out ids that come from pydoc topics (A3's "original domain")
    n_pydoc: int                 # tokens of pydoc text


def build_corpus(config: LabLMConfig) -> Corpus:
    """Tokenizer and splits. Pydoc comes first, so its held-out blocks equal `split_ids(encode(pydoc))[1]`."""
    pydoc = pydoc_text()
    docs = stdlib_docstrings() if config.docstrings else ""
    tokenizer = train_tokenizer(pydoc + ("\n\n" + docs if docs else ""), config.vocab_size)
    pydoc_ids = encode(tokenizer, pydoc)
    parts = [pydoc_ids]
    if docs:
        parts += [torch.tensor([tokenizer.convert_tokens_to_ids(EOS)]), encode(tokenizer, docs)]
    train_ids, val_ids = split_ids(torch.cat(parts), VAL_FRACTION)
    return Corpus(tokenizer, train_ids, val_ids, split_ids(pydoc_ids, VAL_FRACTION)[1], len(pydoc_ids))


def slug(name: str) -> str:
    """A column-name form of a band or kind: 'rank 100-499' -> 'rank_100_499'."""
    return name.replace(" ", "_").replace("-", "_").replace("+", "plus")


def frequency_band(ranks: torch.Tensor) -> list[str]:
    out = []
    for r in ranks.tolist():
        out.append(next(name for lo, hi, name in FREQUENCY_BANDS if r >= lo and (hi is None or r < hi)))
    return out


def token_table(corpus: Corpus) -> pd.DataFrame:
    """Every token id: its text, kind, count in the training split and frequency rank (0 = most frequent)."""
    v = len(corpus.tokenizer)
    counts = torch.bincount(corpus.train, minlength=v)
    rank = torch.empty(v, dtype=torch.long)
    rank[counts.argsort(descending=True, stable=True)] = torch.arange(v)
    pieces = corpus.tokenizer.convert_ids_to_tokens(list(range(v)))
    return pd.DataFrame({"token": range(v), "piece": pieces, "kind": token_kinds(corpus.tokenizer),
                         "count": counts.tolist(), "rank": rank.tolist(), "band": frequency_band(rank)})


def embedding_row_stats(embedding_name: str, steps: tuple[int, ...]):
    """A `stats_fn`: per embedding row (= per token, tied with the unembedding) at `steps`, Adam's |m_hat|,
    sqrt(v_hat) and effective step lr * |m_hat| / (sqrt(v_hat) + eps), each averaged over the row."""
    wanted = set(steps)

    def stats(ctx: StatsContext) -> list[dict]:
        if ctx.step not in wanted:
            return []
        p = next(q for q in ctx.model.parameters() if ctx.names[id(q)] == embedding_name)
        moments = adam_moments(ctx.optimizer, p)
        if moments is None:
            return []
        m_hat, v_hat = moments                                                          # (V, d)
        step = ctx.lr * m_hat.abs() / (v_hat.sqrt() + adam_eps(ctx.optimizer))         # (V, d)
        frame = pd.DataFrame({"token": range(p.shape[0]), "m_abs": m_hat.abs().mean(1).tolist(),
                              "sqrt_v": v_hat.sqrt().mean(1).tolist(), "step_size": step.mean(1).tolist()})
        return frame.to_dict("records")

    return stats


def train_spec(config: LabLMConfig) -> TrainSpec:
    """The training schedule. Shared with `attention_formation`, which retrains this model step for step."""
    return TrainSpec(steps=config.steps, lr=config.lr, warmup_steps=config.warmup_steps, schedule=config.schedule,
                     weight_decay=config.weight_decay, eval_every=config.eval_every, seed=config.seed,
                     measure_steps=tuple(sorted({*config.early_steps, *config.token_stats_steps})),
                     resume_every=min(250, max(10, config.steps // 5)))


def train_batches(config: LabLMConfig, corpus: Corpus):
    """`batch_fn(step)`: (batch_size, seq_len + 1) training windows, a pure function of the step."""
    return lm_batch_fn(corpus.train, config.batch_size, config.seq_len, config.seed)


@dataclass
class Retraining:
    """What an experiment that trains the lab LM again needs before its first step."""
    corpus: Corpus
    model: torch.nn.Module            # freshly initialised from the config's seed: the stored run's starting point
    device: torch.device
    val: torch.Tensor                 # (N, seq_len + 1) held-out windows, on `device`


def retraining(config: LabLMConfig) -> Retraining:
    """The corpus, the initial model and the held-out windows, exactly as `run` builds them (`adam_beta2`,
    `gradient_growth`, `sharpness` and `gradient_sources` train the lab LM again with one thing changed or measured)."""
    corpus = build_corpus(config)
    model = build_lab_lm(config.hf_config(), config.seed)
    device = lab_device()
    return Retraining(corpus, model, device, to_device(eval_windows(corpus.val, config.seq_len, config.eval_tokens),
                                                      device))


def retrain_measuring(config: LabLMConfig, measure_at: tuple[int, ...], windows: int,
                      measure: Callable[[torch.nn.Module, torch.Tensor], list[dict]], ctx: RunContext,
                      desc: str) -> TrainLog:
    """Train the lab LM again exactly as stored, calling `measure(model, batch)` right after the update at each step
    in `measure_at` on a fixed batch, the first `windows` held-out windows (B, seq_len + 1); its rows land in the
    log's `custom_stats` (`sharpness` and `gradient_sources` measure this way)."""
    again = retraining(config)
    batch, wanted = again.val[:windows], set(measure_at)

    def stats(at: StatsContext) -> list[dict]:
        return measure(at.model, batch) if at.step in wanted else []

    return train(again.model, train_batches(config, again.corpus), lm_loss, train_spec(config),
                 eval_fn=lambda m: {"val_loss": mean_loss(m, again.val)}, work_dir=ctx.work_dir, progress=ctx.progress,
                 desc=desc, stats_fn=stats, device=again.device)


def run(config: LabLMConfig, ctx: RunContext) -> RunResult:
    corpus = build_corpus(config)
    tokens = token_table(corpus)
    hf_config = config.hf_config()
    model = build_lab_lm(hf_config, config.seed)
    device = lab_device()
    windows = {"val": eval_windows(corpus.val, config.seq_len, config.eval_tokens),
               "train": eval_windows(corpus.train, config.seq_len, config.eval_tokens),
               "val_pydoc": eval_windows(corpus.val_pydoc, config.seq_len, config.eval_tokens // 2)}
    val_targets = windows["val"][:, 1:]                                                 # (N, T)
    band_of = dict(zip(tokens.token, tokens.band))
    groups = {f"val_band_{slug(band)}": torch.tensor([band_of[t] == band for t in val_targets.flatten().tolist()])
              for _, _, band in FREQUENCY_BANDS}
    kinds = kinds_in_context(windows["val"].flatten(), corpus.tokenizer)
    kinds = [k for i, k in enumerate(kinds) if i % windows["val"].shape[1] != 0]         # targets only
    for kind in sorted(set(kinds)):
        groups[f"val_kind_{slug(kind)}"] = torch.tensor([k == kind for k in kinds])
    windows, groups = to_device(windows, device), to_device(groups, device)           # eval tensors live there

    def eval_fn(model) -> dict[str, float]:
        out = {}
        for name, w in windows.items():
            losses = torch.cat([per_token_loss(model, w[i:i + 32]) for i in range(0, len(w), 32)])  # (N, T)
            out[f"{name}_loss"] = losses.mean().item()
            if name == "val":
                flat = losses.flatten()
                out.update({f"{g}_loss": flat[mask].mean().item() for g, mask in groups.items() if mask.any()})
        return out

    stats_fn = embedding_row_stats("model.embed_tokens.weight", config.token_stats_steps)
    log = train(model, train_batches(config, corpus), lm_loss, train_spec(config), eval_fn=eval_fn,
                work_dir=ctx.work_dir, progress=ctx.progress, desc=f"lab_lm {ctx.label}", param_stats=True,
                stats_fn=stats_fn, device=device)

    v = config.vocab_size
    final = log.evals.iloc[-1]
    summary = {
        "hf_config": hf_config.to_dict(),
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_train_tokens": len(corpus.train), "n_val_tokens": len(corpus.val), "n_pydoc_tokens": corpus.n_pydoc,
        "n_val_pydoc_tokens": len(corpus.val_pydoc),
        "tokens_seen": config.steps * config.batch_size * config.seq_len,
        "epochs": config.steps * config.batch_size * config.seq_len / len(corpus.train),
        "chars_per_token": (len(pydoc_text()) + (len(stdlib_docstrings()) + 2 if config.docstrings else 0))
                           / (len(corpus.train) + len(corpus.val)),
        "uniform_loss": math.log(v),
        "unigram_entropy": ngram_entropy(corpus.train, 1), "bigram_entropy": ngram_entropy(corpus.train, 2),
        "unigram_heldout": ngram_cross_entropy(corpus.train, corpus.val, 1, v),
        "bigram_heldout": ngram_cross_entropy(corpus.train, corpus.val, 2, v),
        "final_train_loss": float(final.train_loss), "final_val_loss": float(final.val_loss),
        "final_val_pydoc_loss": float(final.val_pydoc_loss),
    }
    return RunResult(tables={"steps": log.steps, "evals": log.evals, "param_stats": log.param_stats,
                             "token_stats": log.custom_stats, "tokens": tokens},
                     summary=summary, checkpoints={CHECKPOINT: to_cpu(storable_state(model))},
                     files={TOKENIZER_FILE: corpus.tokenizer.backend_tokenizer.to_str().encode()},
                     seed=config.seed)


SMOKE = LabLMConfig(vocab_size=512, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=64,
                    docstrings=False, seq_len=32, batch_size=8, steps=30, lr=3e-3, warmup_steps=5, eval_every=10,
                    eval_tokens=1024, early_steps=(1, 5), token_stats_steps=(1, 30))

register(Experiment(
    name="lab_lm",
    title="The lab language model: a small Qwen2 trained from scratch on Python's documentation",
    track="Training dynamics",
    page="experiments/loss-curves.qmd",
    version=1,
    config_type=LabLMConfig,
    scales={"smoke": {"base": SMOKE}, "cpu": {"base": LabLMConfig()}},
    run=run,
    description="Byte-level BPE + Qwen2 (GQA) on pydoc topics and stdlib docstrings; base model for fine-tuning.",
))


# ---- the stored model, for `load_lm("lab-lm")` (provided by `labpy.experiments`) ----

def lab_lm_dir(scale: str | None = None) -> Path:
    """A `save_pretrained` folder of the stored lab LM (largest stored scale, or `scale`): what
    `load_lm("lab-lm")` opens. A missing entry raises the `lab run lab_lm` fix (or trains, where allowed)."""
    store = RunStore()
    return hf_copy_dir(results("lab_lm", scale, store)[LABEL], store.root / WORK_DIR / HF_SUBDIR)
