"""Benchmarks of the lab itself, as ratios measured side by side in one run (the machines are shared, noisy).

1. labpy's training loop vs a bare PyTorch loop: same model, same batches, same optimizer; blocks of steps
   alternate between the two so drifts in machine load hit both. Target: >= 0.9 of the bare throughput.
2. Capturing every attention pattern and the residual stream vs a plain forward. Target: <= 1.5x its time.
3. Executing every page from the store, as the tests do. Target: under 5 minutes in all.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from ..device import lab_device, synchronize, to_device
from ..interp.capture import capture
from ..store import RunResult
from ..train import TrainSpec, step_generator, train
from ..validation import check_ranges
from .induction import InductionConfig
from .registry import Experiment, RunContext, register

PAGE_OF_RESULTS = "experiments/benchmarks.qmd"  # reads these results, so it is not among the pages timed


@dataclass(frozen=True)
class BenchmarkConfig:
    block_steps: int = 100       # training steps per timed block
    blocks: int = 5              # blocks per loop, interleaved
    forward_batch: int = 32
    forward_repeats: int = 30
    execute_pages: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("block_steps", "blocks", "forward_batch", "forward_repeats"),
                     nonneg_int=("seed",))


def _bare_loop(model, batches, lr: float) -> None:
    """The reference: what a tutorial's loop does, nothing more."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for tokens in batches:
        logits = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()


def _lab_loop(model, batches, lr: float) -> None:
    def loss_fn(m, tokens):
        return F.cross_entropy(m(tokens)[:, :-1].transpose(1, 2), tokens[:, 1:])

    spec = TrainSpec(steps=len(batches), lr=lr, eval_every=len(batches), grad_clip=1.0)
    train(model, lambda step: batches[step], loss_fn, spec, progress=False, device=batches[0].device)


def _placed(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model on `device` (built on the CPU; moved only when elsewhere: TL's `.to` prints a line)."""
    return model if device.type == "cpu" else model.to(device)


def training_loop_ratio(config: BenchmarkConfig) -> pd.DataFrame:
    from ..models.toy import build_toy_transformer

    base = InductionConfig()
    device = lab_device()
    task_tokens = [torch.randint(0, base.vocab, (base.batch_size, base.seq_len), generator=step_generator(config.seed, s))
                   for s in range(config.block_steps)]
    task_tokens = to_device(task_tokens, device)          # on the device before the clock starts, for both loops
    rows = []
    for block in range(config.blocks):
        for name, loop in (("bare PyTorch", _bare_loop), ("labpy.train", _lab_loop)):
            model = _placed(build_toy_transformer(base.model_config(), seed=config.seed), device)
            synchronize(device)
            start = time.perf_counter()
            loop(model, task_tokens, base.lr)
            synchronize(device)
            rows.append({"block": block, "loop": name,
                         "steps_per_s": config.block_steps / (time.perf_counter() - start)})
    return pd.DataFrame(rows)


@torch.no_grad()
def capture_ratio(config: BenchmarkConfig) -> pd.DataFrame:
    from ..models.toy import build_toy_transformer

    base = InductionConfig()
    device = lab_device()
    model = _placed(build_toy_transformer(base.model_config(), seed=config.seed), device).eval()
    tokens = torch.randint(0, base.vocab, (config.forward_batch, base.seq_len),
                           generator=step_generator(config.seed, 0)).to(device)
    model(tokens), capture(model, tokens)  # warm-up
    rows = []
    for repeat in range(config.forward_repeats):
        for name, fn in (("plain forward", lambda: model(tokens)), ("capture patterns + residual", lambda: capture(model, tokens))):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            rows.append({"repeat": repeat, "call": name, "ms": 1000 * (time.perf_counter() - start)})
    return pd.DataFrame(rows)


def page_times() -> pd.DataFrame:
    from ..pages import execute_all_pages
    from ..paths import project_root

    root = project_root()
    runs = execute_all_pages(root=root, exclude=(PAGE_OF_RESULTS,))
    return pd.DataFrame([{"page": r.path.relative_to(root).as_posix(), "seconds": r.seconds, "ok": r.ok}
                         for r in runs])


def run(config: BenchmarkConfig, ctx: RunContext) -> RunResult:
    loops = training_loop_ratio(config)
    forwards = capture_ratio(config)
    medians = loops.groupby("loop").steps_per_s.median()
    # per-block ratios pair each labpy block with the bare block run just before it
    paired = loops.pivot(index="block", columns="loop", values="steps_per_s")
    loop_ratio = statistics.median(paired["labpy.train"] / paired["bare PyTorch"])
    call_ms = forwards.pivot(index="repeat", columns="call", values="ms")
    capture_cost = statistics.median(call_ms["capture patterns + residual"] / call_ms["plain forward"])
    summary = {"loop_throughput_ratio": loop_ratio, "capture_time_ratio": capture_cost,
               "bare_steps_per_s": float(medians["bare PyTorch"]), "lab_steps_per_s": float(medians["labpy.train"])}
    tables = {"training_loops": loops, "forward_calls": forwards}
    if config.execute_pages:
        pages = page_times()
        tables["pages"] = pages
        summary.update(pages_total_s=float(pages.seconds.sum()), pages_ok=bool(pages.ok.all()),
                       pages_count=len(pages))
    print(f"labpy loop / bare loop throughput: {loop_ratio:.3f}  (target >= 0.9)")
    print(f"capture / plain forward time:      {capture_cost:.3f}  (target <= 1.5)")
    if config.execute_pages:
        print(f"all {summary['pages_count']} pages executed in {summary['pages_total_s']:.0f} s  (target < 300 s)")
    return RunResult(tables=tables, summary=summary, seed=config.seed)


register(Experiment(
    name="benchmarks",
    title="Benchmarks of the lab: training loop, capture, page execution",
    track="The lab itself",
    page=PAGE_OF_RESULTS,
    version=1,
    config_type=BenchmarkConfig,
    scales={"smoke": {"ratios": BenchmarkConfig(block_steps=5, blocks=2, forward_repeats=3, execute_pages=False)},
            "cpu": {"ratios": BenchmarkConfig()}},
    run=run,
    description="Ratios measured side by side in one run; rerun with `lab run benchmarks --force`.",
))
