"""Where to spend extra bits in a 4-bit model: smaller blocks or 8 bits for the down projections, or for everything.

`quant_per_matrix` found SmolLM2's 4-bit damage additive over matrices and led by the MLP's down projections (a
third of the summed KL on a quarter of the weights), while keeping the costliest 5% of matrices in fp32 bought back
under a third. This experiment prices other recipes in bytes: every decoder matrix in NF4 with blocks of 64 (the
baseline, as QLoRA without double quantization), then one change at a time —

- the down projections with blocks of 32 or 16 (more absmax scales, each covering fewer weights),
- the down projections in 8 bits (blockwise absmax int8, 255 levels),
- the down projections kept in fp32,
- every matrix with blocks of 32, and every matrix in 8 bits —

each scored by the KL from the fp32 model and the loss on the true next token over held-out prose and code, and by
its size: code bits per weight plus one fp32 absmax per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..models.lm import load_lm
from ..nf4 import BLOCK, nf4_codebook
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import check_ranges, one_of
from .quant_per_matrix import damage, linear_weights, log_probs, rounded
from .registry import Experiment, RunContext, register
from .residual_stream import MODELS

ABSMAX_BITS = 32
# recipe -> (matrices it changes: "down" or "all", code book "nf4" | "int8" | "fp32", block size)
RECIPES = {
    "all NF4, block 64": ("all", "nf4", BLOCK),
    "down projections: block 32": ("down", "nf4", 32),
    "down projections: block 16": ("down", "nf4", 16),
    "down projections: 8-bit": ("down", "int8", BLOCK),
    "down projections: fp32": ("down", "fp32", BLOCK),
    "all: block 32": ("all", "nf4", 32),
    "all: 8-bit": ("all", "int8", BLOCK),
}


@dataclass(frozen=True)
class QuantBitsConfig:
    model: str = "smollm2-135m"
    n_windows: int = 8              # per kind (prose, code): the same windows as quant_per_matrix
    seq_len: int = 128

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len"), rules={"model": one_of(*MODELS)})


def int8_codebook() -> torch.Tensor:
    """Symmetric absmax int8: the integers −127 … 127 divided by 127 (255 values)."""
    return torch.arange(-127, 128, dtype=torch.float64) / 127.0


def bits(params: int, codebook: str, block: int) -> float:
    """Storage bits of one matrix: its codes plus one fp32 absmax per block (fp32: 32 bits a weight)."""
    if codebook == "fp32":
        return 32.0 * params
    return params * {"nf4": 4, "int8": 8}[codebook] + ABSMAX_BITS * params / block


def recipe_plan(linears: dict[str, torch.nn.Linear], recipe: str) -> dict[str, tuple[str, int]]:
    """name -> (code book, block) for every matrix under `recipe` (the rest stay NF4 with blocks of 64)."""
    which, codebook, block = RECIPES[recipe]
    return {name: (codebook, block) if which == "all" or name.endswith("down_proj") else ("nf4", BLOCK)
            for name in linears}


def run(config: QuantBitsConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)
    model.eval()
    windows = prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1)
    linears = linear_weights(model)
    reference = log_probs(model, windows)
    books = {"nf4": nf4_codebook(), "int8": int8_codebook(), "fp32": None}
    params = {name: m.weight.numel() for name, m in linears.items()}
    rows = []
    for recipe in RECIPES:
        plan = recipe_plan(linears, recipe)
        total = sum(bits(params[n], *plan[n]) for n in linears)
        with rounded(linears, {n: (books[codebook], block) for n, (codebook, block) in plan.items()}):
            rows.append({"recipe": recipe, "bits_per_weight": total / sum(params.values()),
                         "megabytes": total / 8 / 1e6, **damage(reference, log_probs(model, windows), windows)})
    summary = {"model": config.model, "linear_params": sum(params.values()),
               "down_params": sum(p for n, p in params.items() if n.endswith("down_proj"))}
    return RunResult(tables={"recipes": pd.DataFrame(rows)}, summary=summary, seed=0)


register(Experiment(
    name="quant_bits",
    title="Where to spend extra bits in a 4-bit model",
    track="Fine-tuning",
    page="experiments/qlora.qmd",
    version=1,
    config_type=QuantBitsConfig,
    scales={"smoke": {"lab-lm": QuantBitsConfig(model="lab-lm:smoke", n_windows=2, seq_len=16)},
            "cpu": {"smollm2": QuantBitsConfig()}},
    run=run,
    description="SmolLM2's decoder matrices in NF4 (blocks of 64), then smaller blocks, 8 bits or fp32 for the down "
                "projections or for all matrices: KL and loss against the bytes each recipe takes.",
))
