"""Do the frozen model's gradients come in bursts, and what do the batches on the burst steps have in common?

`adam_short_memory` found that at lr 0.1, even with β₂ = 0.95 (a memory of about 20 steps), a weight matrix's
gradient is about a quarter of the scale v̂ remembers, and guessed bursts: a few large steps among many small ones.
A matrix's fresh factor RMS(g) / √mean(v̂) depends on that matrix's gradient-RMS series alone: the mean of v̂ over
its entries is the bias-corrected moving average of RMS(g)² (`replay_fresh`). So recording every matrix's RMS(g) at
every step is enough to tell bursts from a gradient that simply falls, and to replay Adam's memory with either one
taken away.

Beside the gradients, what each step's batch is: its loss, how far its targets' token histogram lies from the corpus
unigram (the frozen model predicts about the unigram everywhere, so a batch far from it asks for a large change), its
most common target token and that token's share, the share of whitespace and punctuation targets, and its longest run
of one repeated token. For the three largest bursts of each seed the text of two of its windows is kept (the one
farthest from the unigram and the one with the highest loss), with their losses. Runs: the sweep's lr 0.1 run at
β₂ = 0.999 and at 0.95, and its lr 1e-2 run as a yardstick (same model, corpus, seeds and schedule as `lr_sweep`).
"""

from __future__ import annotations

import pandas as pd
import torch

from ..device import lab_device
from ..models.lab_lm import per_token_loss
from ..store import RunResult
from ..tasks.corpus import lm_batch_fn, token_kinds
from ..train import StatsContext, train
from .adam_short_memory import ShortMemoryConfig
from .high_rate_weights import HIGH_LR, YARDSTICK_LR, group_of
from .lr_sweep import SMOKE, sweep_tokenizer
from .registry import Experiment, RunContext, register

SMOOTH_STEPS = 11      # a step's burst is its g² over the median g² of the SMOOTH_STEPS steps around it
BURST_TEXTS = 3        # bursts per seed whose windows' text is kept
TEXT_CHARS = 300


def tensor_name(name: str) -> str:
    """'model.layers.0.self_attn.q_proj.weight' -> '0.q_proj'; the embedding keeps 'embedding'."""
    parts = name.split(".")
    return f"{parts[2]}.{parts[4]}" if parts[1] == "layers" else "embedding"


def gradient_rms(ctx: StatsContext) -> list[dict]:
    """A `stats_fn`: each weight matrix's and the embedding's RMS(g), g the gradient Adam used (after the clip)."""
    rows = []
    for p in ctx.model.parameters():
        name = ctx.names[id(p)]
        group = group_of(name)
        if group is not None and p.grad is not None:
            rows.append({"tensor": tensor_name(name), "group": group, "g_rms": float(p.grad.pow(2).mean().sqrt())})
    return rows


def replay_fresh(g_rms: pd.Series, beta2: float) -> pd.Series:
    """The fresh factor RMS(g_t) / √mean(v̂_t) from a tensor's RMS(g) at steps 1, 2, … (in order, none missing).

    Adam's v_t = β₂ v_{t−1} + (1 − β₂) g_t² entry by entry, so its mean over entries follows the same recursion in
    RMS(g_t)², and v̂_t = v_t / (1 − β₂^t)."""
    g2 = g_rms.to_numpy(dtype=float) ** 2
    v, fresh = 0.0, []
    for t, x in enumerate(g2, start=1):
        v = beta2 * v + (1 - beta2) * x
        fresh.append(float(x ** 0.5 / (v / (1 - beta2 ** t)) ** 0.5) if v > 0 else float("nan"))
    return pd.Series(fresh, index=g_rms.index)


def rolling_median(g2: pd.Series, steps: int = SMOOTH_STEPS) -> pd.Series:
    """The median of the `steps` values centred on each (fewer at the ends): the series with its bursts taken out."""
    return g2.rolling(steps, center=True, min_periods=1).median()


def longest_run(row: torch.Tensor) -> int:
    """The longest run of one token repeated back to back in a 1-D sequence."""
    best = current = 1
    for a, b in zip(row[:-1].tolist(), row[1:].tolist()):
        current = current + 1 if a == b else 1
        best = max(best, current)
    return best


def batch_features(batch: torch.Tensor, unigram: torch.Tensor, kinds: list[str]) -> tuple[dict, torch.Tensor]:
    """What a (B, T+1) batch's targets are: (features of the whole batch, each window's L2 distance from `unigram`
    (B,)). `unigram` (V,) is the corpus's token distribution, `kinds` each token id's kind (`token_kinds`)."""
    targets = batch[:, 1:]                                                            # (B, T)
    vocab = unigram.numel()
    counts = torch.zeros(targets.shape[0], vocab).scatter_add_(1, targets, torch.ones(targets.shape))  # (B, V)
    per_window = counts / targets.shape[1]                                            # (B, V)
    whole = counts.sum(0) / targets.numel()                                           # (V,)
    kind_of = pd.Series(kinds)[targets.flatten().numpy()]
    top = int(whole.argmax())
    return ({"distance": float((whole - unigram).norm()), "top_token_id": top, "top_share": float(whole[top]),
             "unigram_surprisal": float(-unigram[targets].log().mean()),
             "whitespace_share": float((kind_of == "whitespace").mean()),
             "punctuation_share": float((kind_of == "punctuation").mean()),
             "longest_run": max(longest_run(row) for row in batch)},
            (per_window - unigram).norm(dim=1))


def gradient_series(entry) -> pd.DataFrame:
    """A stored run's gradients as rows (seed, step, tensor, group, g_rms); the store keeps one column per tensor."""
    wide = entry.table("gradients")
    rows = wide.melt(id_vars=["seed", "step"], var_name="tensor", value_name="g_rms")
    rows["group"] = rows.tensor.map(lambda t: "embedding" if t == "embedding" else "matrices")
    return rows.sort_values(["seed", "tensor", "step"], ignore_index=True)


def tensor_bursts(gradients: pd.DataFrame, series: tuple[str, ...] = ("seed", "tensor")) -> pd.DataFrame:
    """The rows (one per step of each `series`, e.g. seed and tensor) in step order, with g², its rolling median
    (`running`) and the burst: g² over that median (1 for a steady gradient)."""
    rows = gradients.sort_values([*series, "step"]).copy()
    rows["g2"] = rows.g_rms ** 2
    rows["running"] = rows.groupby(list(series)).g2.transform(rolling_median)
    rows["burst"] = rows.g2 / rows.running
    return rows


def burst_sizes(gradients: pd.DataFrame) -> pd.DataFrame:
    """Per seed and step: the mean over weight matrices of their bursts (`tensor_bursts`)."""
    rows = tensor_bursts(gradients[gradients.group == "matrices"])
    return rows.groupby(["seed", "step"], as_index=False).burst.mean()


def run(config: ShortMemoryConfig, ctx: RunContext) -> RunResult:
    device = lab_device()
    train_ids, _ = config.data(device)
    tokenizer = sweep_tokenizer(config.vocab_size, config.docstrings)
    kinds = token_kinds(tokenizer)
    unigram = torch.bincount(train_ids, minlength=config.vocab_size).float()
    unigram = (unigram + 1e-9) / unigram.sum()                                        # (V,); no zero to log
    every_step = tuple(range(1, config.steps + 1))
    window = range(config.window_start, config.window_end + 1)
    gradients, steps, texts = [], [], []
    for seed in config.seeds:
        model = config.build_model(seed)
        window_losses: list[torch.Tensor] = []

        def recording_loss(m: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
            per_token = per_token_loss(m, batch)                                      # (B, T)
            window_losses.append(per_token.detach().mean(dim=1).cpu())                # (B,)
            return per_token.mean()

        batch_fn = lm_batch_fn(train_ids, config.batch_size, config.seq_len, seed)
        spec = config.train_spec(seed, measure_steps=every_step, eval_every=config.steps,
                                 betas=(config.beta1, config.beta2))
        log = train(model, batch_fn, recording_loss, spec, stats_fn=gradient_rms, progress=ctx.progress,
                    desc=f"gradient_bursts {ctx.label} seed {seed}", device=device)
        assert len(window_losses) == config.steps, "the loss was recorded once per step"
        seed_gradients = log.custom_stats.assign(seed=seed)
        gradients.append(seed_gradients)
        # the batch of step `done` is batch_fn(done - 1): updates are counted from 1
        per_step = [{"step": done, **batch_features(batch_fn(done - 1), unigram, kinds)[0]} for done in every_step]
        seed_steps = log.steps.merge(pd.DataFrame(per_step), on="step").assign(seed=seed)
        seed_steps["top_token"] = [tokenizer.decode([i]) for i in seed_steps.pop("top_token_id")]
        steps.append(seed_steps)
        sizes = burst_sizes(seed_gradients)
        for burst in sizes[sizes.step.isin(window)].nlargest(BURST_TEXTS, "burst").itertuples():
            batch = batch_fn(burst.step - 1)
            losses, distances = window_losses[burst.step - 1], batch_features(batch, unigram, kinds)[1]  # (B,) each
            for picked, score in (("farthest from the unigram", distances), ("highest loss", losses)):
                w = int(score.argmax())
                texts.append({"seed": seed, "step": burst.step, "burst": burst.burst, "window": w, "picked": picked,
                              "window_loss": float(losses[w]), "window_distance": float(distances[w]),
                              "batch_loss": float(losses.mean()),
                              "text": tokenizer.decode(batch[w].tolist())[:TEXT_CHARS]})
    gradients_table = (pd.concat(gradients, ignore_index=True)             # one column per tensor: a small table
                       .pivot(index=["seed", "step"], columns="tensor", values="g_rms").reset_index())
    summary = {"lr": config.lr, "betas": [config.beta1, config.beta2], "smooth_steps": SMOOTH_STEPS,
               "unigram_self_distance": float(unigram.norm())}
    return RunResult(tables={"gradients": gradients_table, "steps": pd.concat(steps, ignore_index=True),
                             "bursts": pd.DataFrame(texts)},
                     summary=summary, seed=config.seeds[0])


register(Experiment(
    name="gradient_bursts",
    title="Do the frozen model's gradients come in bursts? Every step's gradient and batch at lr 0.1",
    track="Training dynamics",
    page="experiments/learning-rate.qmd",
    version=1,
    config_type=ShortMemoryConfig,
    scales={"smoke": {"lr-0.1": ShortMemoryConfig(lr=HIGH_LR, **SMOKE, window_start=2, window_end=6, beta2=0.999)},
            "cpu": {"lr-0.1": ShortMemoryConfig(lr=HIGH_LR, beta2=0.999),
                    "beta2-0.95": ShortMemoryConfig(lr=HIGH_LR, beta2=0.95),
                    "yardstick": ShortMemoryConfig(lr=YARDSTICK_LR, beta2=0.999)}},
    run=run,
    description="The sweep's lr 0.1 run (β₂ 0.999 and 0.95) and its lr 1e-2 run: every weight matrix's gradient "
                "RMS at every step, and what each step's batch is (its loss, its distance from the unigram, its "
                "commonest token, whitespace, runs), with the text of the largest bursts' windows.",
))
