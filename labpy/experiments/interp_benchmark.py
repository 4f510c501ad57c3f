"""What looking inside a real LM costs: the capture layer against a plain forward and TransformerLens, side by side.

For SmolLM2-135M and the lab LM, on the same batch, repeats interleave three ways of running the model:
a plain Hugging Face forward (eager attention, the baseline), `labpy.interp.hf_hooks.run_with_cache` keeping
every attention pattern and the residual stream after every block, and TransformerLens 4's
`TransformerBridge.run_with_cache` keeping the same activations. Interleaving lets drifts in machine load hit
all three alike; the page reports ratios of medians. It also times SmolLM2's load: the first load dequantizes
the GGUF into a cached `save_pretrained` copy, later loads read the copy.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..interp.hf_hooks import run_with_cache
from ..models.lm import load_lm, packaged_model_dir, packaged_model_file
from ..store import RunResult
from ..validation import check_ranges
from .registry import Experiment, RunContext, register

WANTED = ("attn.hook_pattern", "hook_resid_post")
# the interpretability layer's goals (issue: Tracks B and C), read by the benchmarks page
TARGET_VS_PLAIN, TARGET_VS_TRANSFORMER_LENS, TARGET_LOAD_S = 1.15, 1.0, 20.0


@dataclass(frozen=True)
class InterpBenchmarkConfig:
    batch: int = 4
    seq_len: int = 128
    repeats: int = 40       # 15 until the third run: too few to tell SmolLM2's capture from the bridge's
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("batch", "seq_len", "repeats"), nonneg_int=("seed",))


def _keep(name: str) -> bool:
    return name.endswith(WANTED)


def _bridge(model, folder: Path):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    return TransformerBridge.boot_transformers(str(folder), hf_model=model, device="cpu",
                                               tokenizer=AutoTokenizer.from_pretrained(folder))


@torch.no_grad()
def time_captures(model, bridge, tokens: torch.Tensor, repeats: int) -> pd.DataFrame:
    """Seconds per call of each way, one row per (repeat, way); one warm-up call each first."""
    ways = {
        "plain HF forward": lambda: model(input_ids=tokens, use_cache=False).logits,
        "lab hooks (run_with_cache)": lambda: run_with_cache(model, tokens, _keep),
        "TransformerLens bridge (run_with_cache)": lambda: bridge.run_with_cache(tokens, names_filter=_keep),
    }
    for call in ways.values():
        call()
    rows = []
    for repeat in range(repeats):
        for way, call in ways.items():
            t0 = time.perf_counter()
            call()
            rows.append({"repeat": repeat, "way": way, "seconds": time.perf_counter() - t0})
    return pd.DataFrame(rows)


def time_smollm2_loads() -> pd.DataFrame:
    """SmolLM2 from its GGUF into a fresh cache (the first load anywhere) and from the cached copy."""
    gguf = packaged_model_file("smollm2-135m")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        import os

        saved = os.environ.get("LAB_RUNS_DIR")
        os.environ["LAB_RUNS_DIR"] = scratch           # an empty cache: the conversion happens
        try:
            t0 = time.perf_counter()
            packaged_model_dir("smollm2-135m", gguf)
            load_lm("smollm2-135m")
            rows.append({"load": "first (dequantize GGUF, write the cached copy, load it)",
                         "seconds": time.perf_counter() - t0})
            t0 = time.perf_counter()
            load_lm("smollm2-135m")
            rows.append({"load": "later (read the cached copy)", "seconds": time.perf_counter() - t0})
        finally:
            if saved is None:
                os.environ.pop("LAB_RUNS_DIR")
            else:
                os.environ["LAB_RUNS_DIR"] = saved
    return pd.DataFrame(rows)


def paired_ratios(captures: pd.DataFrame, model: str, numerator: str, denominator: str) -> pd.Series:
    """Per-repeat time ratio of two ways on one model: both ran back to back in each repeat, so machine load
    that drifts between repeats cancels."""
    wide = captures[captures.model == model].pivot(index="repeat", columns="way", values="seconds")
    return wide[numerator] / wide[denominator]


def median_interval(ratios: pd.Series, confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high): the median ratio with a percentile-bootstrap interval (scipy), seeded so a page
    shows the same interval every time it executes."""
    from scipy.stats import bootstrap

    values = ratios.to_numpy(dtype=float)
    ci = bootstrap((values,), np.median, confidence_level=confidence, method="percentile", n_resamples=10_000,
                   rng=np.random.default_rng(seed)).confidence_interval
    return float(np.median(values)), float(ci.low), float(ci.high)


def run(config: InterpBenchmarkConfig, ctx: RunContext) -> RunResult:
    from ..models.lm import resolve

    frames = []
    generator = torch.Generator().manual_seed(config.seed)
    for name in ("smollm2-135m", "lab-lm"):
        model, tokenizer = load_lm(name)
        folder = resolve(name)[1] if name == "lab-lm" else packaged_model_dir(name, packaged_model_file(name))
        tokens = torch.randint(100, len(tokenizer), (config.batch, config.seq_len), generator=generator)
        # the bridge rewrites the modules of the model it wraps: it gets its own copy, the plain forward and the
        # lab's hooks keep running the untouched Hugging Face model
        frames.append(time_captures(model, _bridge(copy.deepcopy(model), folder), tokens, config.repeats)
                      .assign(model=name))
    timings = pd.concat(frames, ignore_index=True)
    loads = time_smollm2_loads()
    medians = timings.groupby(["model", "way"]).seconds.median()
    summary = {f"{model} {way}": float(v) for (model, way), v in medians.items()}
    return RunResult(tables={"captures": timings, "loads": loads}, summary=summary, seed=config.seed)


register(Experiment(
    name="interp_benchmark",
    title="What capturing activations of a real LM costs: lab hooks vs a plain forward vs TransformerLens",
    track="The lab itself",
    page="experiments/benchmarks.qmd",
    version=2,                                      # 2: the bridge no longer rewrites the model being timed
    config_type=InterpBenchmarkConfig,
    scales={"cpu": {"base": InterpBenchmarkConfig()}},
    run=run,
    device="cpu",
    description="Capture of all attention patterns and residuals vs a plain HF forward and TransformerLens' "
                "run_with_cache, on SmolLM2-135M and the lab LM; SmolLM2 load times.",
))
