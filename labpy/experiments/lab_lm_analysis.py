"""What the lab LM's pages compute from the store: per-token held-out losses and the loss-curves page's
measurements (cheap: one forward pass over held-out text), and the optimizer-state page's statistics.

`experiments/loss-curves.qmd` and `experiments/optimizer-state.qmd` read these; the training code is `lab_lm.py`.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from ..models.lab_lm import MATRIX_KINDS, load_lab_lm, parameter_kind, per_token_loss
from ..store import RunEntry
from ..tasks.corpus import (EOS, VAL_FRACTION, encode, eval_windows, kinds_in_context, pydoc_text, split_ids,
                            stdlib_docstrings)
from ..train import TrainSpec
from .lab_lm import FREQUENCY_BANDS, Corpus, slug


def stored_corpus(entry: RunEntry) -> Corpus:
    """The run's corpus rebuilt with its stored tokenizer (the same ids as in training)."""
    config = entry.config
    _, tokenizer = load_lab_lm(entry)
    pydoc = pydoc_text()
    pydoc_ids = encode(tokenizer, pydoc)
    parts = [pydoc_ids]
    if config.docstrings:
        parts += [torch.tensor([tokenizer.convert_tokens_to_ids(EOS)]), encode(tokenizer, stdlib_docstrings())]
    train_ids, val_ids = split_ids(torch.cat(parts), VAL_FRACTION)
    return Corpus(tokenizer, train_ids, val_ids, split_ids(pydoc_ids, VAL_FRACTION)[1], len(pydoc_ids))


@torch.no_grad()
def per_token_frame(entry: RunEntry, max_tokens: int = 16384, pydoc_only: bool = True) -> pd.DataFrame:
    """Loss of every held-out target under the final model, with the target's text, kind in context,
    training count and frequency band. Pydoc held-out only by default (no docstring extraction: fast)."""
    model, tokenizer = load_lab_lm(entry)
    config = entry.config
    pydoc_ids = encode(tokenizer, pydoc_text())
    held = split_ids(pydoc_ids, VAL_FRACTION)[1] if pydoc_only else stored_corpus(entry).val
    windows = eval_windows(held, config.seq_len, max_tokens)                          # (N, T+1)
    losses = torch.cat([per_token_loss(model, windows[i:i + 32]) for i in range(0, len(windows), 32)])
    kinds = kinds_in_context(windows.flatten(), tokenizer)
    t1 = windows.shape[1]
    tokens = entry.table("tokens").set_index("token")
    targets = windows[:, 1:].flatten()
    frame = pd.DataFrame({"target": targets.tolist(), "loss": losses.flatten().tolist(),
                          "kind": [k for i, k in enumerate(kinds) if i % t1 != 0]})
    frame["count"] = tokens["count"].reindex(frame.target).to_numpy()
    frame["band"] = tokens["band"].reindex(frame.target).to_numpy()
    frame["piece"] = tokens["piece"].reindex(frame.target).to_numpy()
    return frame


def first_step_below(evals: pd.DataFrame, column: str, level: float) -> float:
    """First eval step at which `column` is below `level` (NaN if never)."""
    below = evals[evals[column] < level]
    return float(below.step.iloc[0]) if len(below) else math.nan


def steps_near(steps: pd.DataFrame, level: float, half_width: float = 0.25, window: int = 10) -> int:
    """How many steps the training loss (rolling mean over `window` steps) spends within `half_width` of `level`:
    a curve passing straight through a level spends a few steps there; a plateau at it spends many."""
    smooth = steps.loss.rolling(window, min_periods=1).mean()
    return int(((smooth - level).abs() < half_width).sum())


def half_drop_step(evals: pd.DataFrame, column: str) -> float:
    """First eval step at which `column` has made half of its total fall (initial to final); NaN if absent."""
    if column not in evals:
        return math.nan
    start, end = evals[column].iloc[0], evals[column].iloc[-1]
    return first_step_below(evals, column, start - 0.5 * (start - end))


def loss_measurements(entry: RunEntry, per_token: pd.DataFrame) -> dict:
    """Every number the loss-curves page checks its predictions against."""
    s, evals, steps = entry.summary, entry.table("evals"), entry.table("steps")
    total = float(evals.step.iloc[-1])
    kinds = per_token.groupby("kind").loss.mean()
    bands = per_token.groupby("band").loss.mean()
    band_cols = {name: f"val_band_{slug(name)}_loss" for _, _, name in FREQUENCY_BANDS}
    out = {
        "uniform": s["uniform_loss"], "initial_val": float(evals.val_loss.iloc[0]),
        "unigram": s["unigram_entropy"], "bigram": s["bigram_entropy"],
        "unigram_heldout": s["unigram_heldout"], "bigram_heldout": s["bigram_heldout"],
        "step_below_unigram": first_step_below(evals, "val_loss", s["unigram_heldout"]),
        "step_below_bigram": first_step_below(evals, "val_loss", s["bigram_heldout"]),
        "total_steps": total,
        "final_val": float(evals.val_loss.iloc[-1]), "final_train": float(evals.train_loss.iloc[-1]),
        "steps_near_unigram": steps_near(steps, s["unigram_entropy"]),
        "steps_near_midway": steps_near(steps, 0.5 * (s["unigram_entropy"] + s["bigram_entropy"])),
        "word_start_loss": float(kinds.get("word start", math.nan)),
        "continuation_loss": float(kinds.get("word continuation", math.nan)),
        "top_band_loss": float(bands.get("top 100", math.nan)), "rare_band_loss": float(bands.get("rank 500+", math.nan)),
        "half_drop_top": half_drop_step(evals, band_cols["top 100"]),
        "half_drop_rare": half_drop_step(evals, band_cols["rank 500+"]),
    }
    out["gap"] = out["final_val"] - out["final_train"]
    out["margin_below_bigram"] = out["bigram_heldout"] - out["final_val"]
    return out


# ---- optimizer-state analysis ----

def param_frame(entry: RunEntry) -> pd.DataFrame:
    """The stored per-tensor statistics with layer and kind columns (kind 'q_proj', 'q_proj.bias', 'norm', ...)."""
    frame = entry.table("param_stats")
    parsed = frame.name.map(parameter_kind)
    return frame.assign(layer=parsed.str[0], kind=parsed.str[1])


def noise_floor_snr(beta1: float = 0.9) -> float:
    """E|m_hat| / sqrt(v_hat) when gradients are pure zero-mean Gaussian noise, late in training (bias
    correction ~1): m is then N(0, sigma^2 (1 - b1) / (1 + b1)), so E|m| = sigma sqrt(2/pi) sqrt((1-b1)/(1+b1))."""
    return math.sqrt(2 / math.pi) * math.sqrt((1 - beta1) / (1 + beta1))


def token_frame(entry: RunEntry) -> pd.DataFrame:
    """Per-embedding-row Adam statistics at the stored steps, with each token's training count and band."""
    return entry.table("token_stats").merge(entry.table("tokens"), on="token")


def attention_mlp_snr(params: pd.DataFrame) -> pd.Series:
    """Step -> the mean SNR |m̂|/√v̂ of the attention and MLP weight matrices: each kind averaged over layers
    first, then the kinds averaged (the embedding left out), so that no kind counts more for having more layers."""
    matrices = params[params.kind.isin(MATRIX_KINDS) & (params.kind != "embedding")]
    return matrices.groupby(["step", "kind"]).snr.mean().groupby("step").mean()


def median_over_matrices(params: pd.DataFrame) -> pd.DataFrame:
    """Step -> the median weight matrix's statistics (gradient RMS, weight RMS, √v̂, SNR: those present), over every
    embedding, attention and MLP matrix of every layer. `params` needs a `name` column (the stored per-tensor rows)."""
    kinds = params.name.map(lambda name: parameter_kind(name)[1])
    columns = [c for c in ("grad_rms", "weight_rms", "sqrt_v_mean", "snr") if c in params.columns]
    return params[kinds.isin(MATRIX_KINDS)].groupby("step")[columns].median()


def growth(series: pd.Series, start: int) -> float:
    """How many times larger a per-step series is at its last step than at `start`."""
    return float(series.iloc[-1] / series[start])


def optimizer_measurements(entry: RunEntry) -> dict:
    """Every number the optimizer-state page checks its predictions against."""
    params = param_frame(entry)
    matrices = params[params.kind.isin(MATRIX_KINDS)]
    first, last = matrices[matrices.step == matrices.step.min()], matrices[matrices.step == matrices.step.max()]
    steps = sorted(matrices.step.unique())
    mid_step = min(steps, key=lambda st: abs(st - steps[-1] / 2))
    mid = matrices[matrices.step == mid_step]
    tokens = token_frame(entry)
    end = tokens[tokens.step == tokens.step.max()]
    band = end.groupby("band")[["sqrt_v", "step_size"]].median()
    return {
        "first_step": int(first.step.iloc[0]),
        "first_update_spread": float((first.update_rms.max() - first.update_rms.min()) / first.update_rms.mean()),
        "first_grad_range": float(first.grad_rms.max() / first.grad_rms.min()),
        "last_step": int(last.step.iloc[0]), "last_snr_max": float(last.snr.max()),
        "last_snr_median": float(last.snr.median()), "noise_floor": noise_floor_snr(TrainSpec.betas[0]),  # lab_lm trains with the default betas
        "mid_step": int(mid_step), "mid_ratio_min": float(mid.update_to_weight.min()),
        "mid_ratio_max": float(mid.update_to_weight.max()),
        "rare_sqrt_v_ratio": float(band.loc["top 100", "sqrt_v"] / band.loc["rank 500+", "sqrt_v"]),
        "rare_step_ratio": float(band.loc["top 100", "step_size"] / band.loc["rank 500+", "step_size"]),
        "token_step": int(end.step.iloc[0]),
    }


def slowest_stretch(steps: pd.DataFrame, start: int, stop: int, window: int = 10) -> dict[str, float]:
    """Where, between steps `start` and `stop`, the training loss (rolling mean over `window`) falls slowest:
    the step, its fall per `window` steps, and the loss there; with the fastest fall in the same range."""
    smooth = steps.loss.rolling(window, min_periods=1).mean()
    fall = smooth.shift(window // 2) - smooth.shift(-(window // 2))            # loss lost over `window` steps
    inside = steps.step.between(start, stop)
    slow, fast = fall[inside].idxmin(), fall[inside].idxmax()
    return {"step": float(steps.step[slow]), "fall": float(fall[slow]), "loss": float(smooth[slow]),
            "fastest_fall": float(fall[fast]), "fastest_step": float(steps.step[fast])}


FACTORS = ("grad_rms", "input_size", "backward_size", "pairing", "coherence")

# The weights "around" each kind of matrix, as the optimizer-state page's prediction names them: the norm gain
# before it and the matrices its gradient is multiplied with (names relative to `model.layers.<l>.`).
NEIGHBOURS = {
    "q_proj": ("input_layernorm", "self_attn.k_proj"),                 # read through the gain, scored against keys
    "k_proj": ("input_layernorm", "self_attn.q_proj"),
    "v_proj": ("input_layernorm", "self_attn.o_proj"),                 # read through the attention output
    "o_proj": ("self_attn.v_proj",),                                    # reads the values
    "gate_proj": ("post_attention_layernorm", "mlp.up_proj", "mlp.down_proj"),
    "up_proj": ("post_attention_layernorm", "mlp.gate_proj", "mlp.down_proj"),
    "down_proj": ("post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj"),
}


def factor_growth(factors: pd.DataFrame, start: int) -> pd.DataFrame:
    """(layer, kind) -> how many times each of `gradient_sources`' factors (and the gradient they multiply out to)
    is larger at the last measured step than at `start`."""
    by_step = factors.set_index(["step", "layer", "kind"])[list(FACTORS)]
    return by_step.loc[factors.step.max()] / by_step.loc[start]


def neighbour_growth(weights: pd.DataFrame, start: int) -> pd.Series:
    """(layer, kind) -> the product of the weight-RMS growths of the matrix's `NEIGHBOURS`, from `start` to the end."""
    rms = weights.pivot(index="name", columns="step", values="weight_rms")
    grown = rms[rms.columns.max()] / rms[start]
    layers = sorted({int(n.split(".")[2]) for n in rms.index if n.startswith("model.layers.")})
    return pd.Series({(layer, kind): math.prod(grown[f"model.layers.{layer}.{n}.weight"] for n in names)
                      for layer in layers for kind, names in NEIGHBOURS.items()}).rename_axis(["layer", "kind"])
