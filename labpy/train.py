"""One training loop for every experiment.

Why one loop: every run records the same things (loss, learning rate, gradient norm, update/weight ratio,
Adam's moments, eval metrics), saves checkpoints at chosen steps, and resumes after a kill — so curves from
different experiments are comparable and no experiment re-implements bookkeeping.

Determinism: the caller seeds the model's initialisation; batches come from `batch_fn(step)`, a pure function
of the step (seed it with `step_generator`). There is no data-loader state, so a resumed run replays exactly
the batches an uninterrupted one would have seen, and reaches bit-identical weights on the CPU.
"""

from __future__ import annotations

import copy
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from .device import lab_device, to_cpu, to_device
from .errors import ResumeStateError, TrainingDivergedError, TrainingInterrupted
from .validation import NONNEG_INT, POSITIVE, POSITIVE_INT, check_ranges, number_between, one_of, or_none, require

Batch = Any
RESUME_FILE = "resume.pt"


@dataclass(frozen=True)
class TrainSpec:
    steps: int
    lr: float
    warmup_steps: int = 0
    schedule: str = "constant"  # "constant" or "cosine" (after warm-up)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    # "adamw"; "sgd": momentum `momentum`, weight_decay as L2 (torch's SGD), betas unused; "sgdw": the same SGD with
    # weight_decay decoupled as AdamW's (each step first w ← w·(1 − lr·decay), outside the momentum)
    optimizer: str = "adamw"
    momentum: float = 0.9
    grad_clip: float | None = 1.0
    eval_every: int = 100
    checkpoint_steps: tuple[int, ...] = ()
    resume_every: int = 500
    seed: int = 0
    measure_steps: tuple[int, ...] = ()  # more steps to evaluate and measure besides every eval_every (early ones)
    threads: int = 1  # one torch thread: faster for small models on shared 2-core machines
    switch_step: int | None = None   # from this update on the rate is `switch_lr` instead of `lr` (a one-off change)
    switch_lr: float | None = None
    # (regex over parameter names, multiplier) pairs: the first pattern a parameter's name matches multiplies its
    # rate (and so its decoupled decay), as μP's per-layer rates do; a parameter no pattern matches keeps the rate
    lr_scales: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("steps", "eval_every", "resume_every", "threads"), positive=("lr",),
                     nonneg_int=("warmup_steps", "seed"), nonneg=("weight_decay",),
                     rules={"schedule": one_of("constant", "cosine"), "grad_clip": or_none(POSITIVE),
                            "optimizer": one_of("adamw", "sgd", "sgdw"),
                            "momentum": number_between(0, 1, high_open=True),
                            "betas": number_between(0, 1, high_open=True), "checkpoint_steps": NONNEG_INT,
                            "measure_steps": NONNEG_INT, "switch_step": or_none(POSITIVE_INT),
                            "switch_lr": or_none(POSITIVE)},
                     hint=False)
        require(self, len(self.betas) == 2, "betas", "must be a pair (beta1, beta2)", hint=False)
        require(self, (self.switch_step is None) == (self.switch_lr is None), "switch_lr",
                f"must be given together with switch_step (switch_step = {self.switch_step}, switch_lr = "
                f"{self.switch_lr}); set both or neither", hint=False)
        require(self, self.switch_step is None or self.warmup_steps < self.switch_step < self.steps, "switch_step",
                f"must fall after the warm-up and before the last step ({self.warmup_steps} < switch_step < "
                f"{self.steps})", hint=False)
        for pattern, scale in self.lr_scales:
            require(self, isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0, "lr_scales",
                    f"holds multiplier {scale!r} for {pattern!r}; each must be a finite number > 0", hint=False)
            try:
                re.compile(pattern)
            except (re.error, TypeError) as err:
                require(self, False, "lr_scales", f"holds {pattern!r}, not a regular expression ({err})", hint=False)


def lr_scale_groups(named: list[tuple[str, torch.nn.Parameter]],
                    lr_scales: tuple[tuple[str, float], ...]) -> list[dict[str, Any]]:
    """Optimizer parameter groups, one per rate multiplier (`TrainSpec.lr_scales`), each with its `lr_scale`.

    A pattern that matches no trained parameter is a typo that would silently train at the wrong rate, so it is
    an error naming the pattern."""
    def scale_of(name: str) -> float:
        return next((float(scale) for pattern, scale in lr_scales if re.search(pattern, name)), 1.0)

    for pattern, _ in lr_scales:
        if not any(re.search(pattern, name) for name, _ in named):
            example = f" (e.g. {named[0][0]!r})" if named else ""
            raise ValueError(f"lr_scales pattern {pattern!r} matches no trained parameter{example}; fix the "
                             f"pattern or drop it")
    scales = [scale_of(name) for name, _ in named]
    return [{"params": [p for (_, p), s in zip(named, scales) if s == scale], "lr_scale": scale}
            for scale in dict.fromkeys(scales)]


def lr_at(spec: TrainSpec, step: int) -> float:
    """Learning rate for the update taken at `step` (0-based): linear warm-up, then constant or cosine; from
    `switch_step` on, `switch_lr` takes the place of `lr`."""
    if spec.warmup_steps and step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    peak = spec.switch_lr if spec.switch_step is not None and step >= spec.switch_step else spec.lr
    if spec.schedule == "cosine":
        span = max(1, spec.steps - spec.warmup_steps)
        progress = (step - spec.warmup_steps) / span
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    return peak


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator determined by (seed, step): the data of a step never depends on what ran before it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@dataclass
class TrainLog:
    steps: pd.DataFrame                      # one row per step: step, loss, lr, grad_norm
    evals: pd.DataFrame                      # one row per eval step: step, eval metrics, optimizer statistics
    checkpoints: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    param_stats: pd.DataFrame = field(default_factory=pd.DataFrame)   # per measured step and parameter tensor
    custom_stats: pd.DataFrame = field(default_factory=pd.DataFrame)  # rows returned by `stats_fn`
    optimizer_state: dict[str, Any] = field(default_factory=dict)    # the optimizer's state_dict at the end (CPU)


@dataclass(frozen=True)
class StatsContext:
    """What a `stats_fn` sees at a measured step, right after the optimizer's update."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: int                                 # updates taken so far
    lr: float                                 # learning rate of the update just taken
    names: dict[int, str]                     # id(parameter) -> its name in the model


def adam_moments(optimizer: torch.optim.Optimizer, p: torch.nn.Parameter) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Bias-corrected Adam moments (m_hat, v_hat) of one parameter, shaped like it; None before its first step.

    m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t): what Adam actually divides, so that
    lr * m_hat / (sqrt(v_hat) + eps) is exactly its update (AdamW adds the decoupled weight decay apart).
    """
    state = optimizer.state.get(p)
    if not state or "exp_avg" not in state:
        return None
    group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
    beta1, beta2 = group["betas"]
    t = float(state["step"])
    m_hat = state["exp_avg"] / (1 - beta1 ** t)
    v_hat = state["exp_avg_sq"] / (1 - beta2 ** t)
    return m_hat, v_hat


def adam_eps(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["eps"])


def parameter_statistics(named: list[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer,
                         before: list[torch.Tensor], lr: float) -> list[dict[str, float | str]]:
    """Per parameter tensor: weight, gradient and update sizes, Adam's moments and its effective step size.

    `before` holds the weights before the update just taken. RMS values are root-mean-squares over the
    tensor's entries; `step_*` is lr * |m_hat| / (sqrt(v_hat) + eps), Adam's per-entry step (lr times the tensor's
    `lr_scale`), and `snr` the same without lr: near 1 where gradients agree step after step, near 0 where they
    are noise.
    """
    eps, rows = adam_eps(optimizer), []
    for (name, p), b in zip(named, before):
        moments = adam_moments(optimizer, p)
        if moments is None:
            continue
        m_hat, v_hat = moments
        scale = next(g for g in optimizer.param_groups if any(q is p for q in g["params"])).get("lr_scale", 1.0)
        w_rms = b.pow(2).mean().sqrt().item()
        update_rms = (p.detach() - b).pow(2).mean().sqrt().item()
        ratio = m_hat.abs() / (v_hat.sqrt() + eps)            # Adam's normalised step, per entry
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        rows.append({
            "name": name, "numel": p.numel(), "weight_rms": w_rms, "grad_rms": grad.pow(2).mean().sqrt().item(),
            "update_rms": update_rms, "update_to_weight": update_rms / w_rms if w_rms > 1e-12 else float("nan"),
            "m_abs_mean": m_hat.abs().mean().item(), "sqrt_v_mean": v_hat.sqrt().mean().item(),
            "snr": ratio.mean().item(), "step_mean": lr * scale * ratio.mean().item(),
            "step_median": lr * scale * ratio.flatten().median().item(),
        })
    return rows


def optimizer_statistics(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Global Adam moment magnitudes: mean |m| (momentum) and mean sqrt(v) (the per-parameter step scale)."""
    m_abs, v_sqrt, count = 0.0, 0.0, 0
    for p in model.parameters():
        state = optimizer.state.get(p)
        if not state or "exp_avg" not in state:
            continue
        m_abs += state["exp_avg"].abs().sum().item()
        v_sqrt += state["exp_avg_sq"].sqrt().sum().item()
        count += p.numel()
    if not count:
        return {}
    return {"adam_m_abs_mean": m_abs / count, "adam_sqrt_v_mean": v_sqrt / count}


def train(
    model: torch.nn.Module,
    batch_fn: Callable[[int], Batch],
    loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor],
    spec: TrainSpec,
    eval_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    work_dir: Path | None = None,
    progress: bool | None = None,
    desc: str = "train",
    parameters: Iterable[torch.nn.Parameter] | None = None,
    param_stats: bool = False,
    stats_fn: Callable[[StatsContext], list[dict[str, Any]]] | None = None,
    device: torch.device | str | None = None,
    stop_fn: Callable[[list[dict[str, float]]], bool] | None = None,
    initial_optimizer_state: dict[str, Any] | None = None,
) -> TrainLog:
    """Train `model` in place for `spec.steps` steps with AdamW (or SGD: `spec.optimizer`); resume from `work_dir` if
    a run was cut off.

    Device: the model is moved to `device` (default `labpy.device.lab_device()`: CUDA when present, else the
    CPU, `LAB_DEVICE` overrides) and stays there afterwards; every batch from `batch_fn` is moved there before
    `loss_fn` sees it, and `eval_fn` sees the model there (its own fixed tensors should live there too).
    The log's checkpoints are CPU tensors.
    `progress=None` shows a bar only on a terminal, so pages (whose stderr is not a terminal) stay clean.
    `parameters` restricts training to a subset (e.g. LoRA adapters); default: all that require grad.
    At each measured step (every `eval_every`, the last, and `spec.measure_steps`), `param_stats=True` records
    `parameter_statistics` per parameter tensor, and `stats_fn(StatsContext)` may return rows of its own
    (e.g. per embedding row); both land in the log, with a `step` column, and survive a resume.
    `stop_fn(eval_rows)`, asked after each evaluation, ends training early when it returns True (grokking runs
    stop once the test accuracy has held); it must depend on the evaluations alone, so a resumed run stops at
    the same step, and the log then holds fewer than `spec.steps` steps.
    `initial_optimizer_state` (an earlier log's `optimizer_state`) starts the optimizer from another run's moments
    instead of zero, so a run handed on at some step continues as one run would; a resume state overrides it.

    Errors a user can act on: a non-finite loss raises `TrainingDivergedError` (a FloatingPointError) naming
    the step and the learning rate; an unreadable `resume.pt` raises `ResumeStateError` naming the file; Ctrl-C
    saves the resume state (when there is a `work_dir`) and raises `TrainingInterrupted` (a KeyboardInterrupt)
    saying which step is kept where.
    """
    device = lab_device() if device is None else torch.device(device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        return _train(model, batch_fn, loss_fn, spec, eval_fn, work_dir, progress, desc, parameters,
                      param_stats, stats_fn, device, stop_fn, initial_optimizer_state)
    finally:
        torch.set_num_threads(previous_threads)


class _DeferredInterrupt:
    """While an update is half applied (optimizer step, its bookkeeping, a resume save), Ctrl-C is held back
    until the step is whole, so the state saved on interruption is always that of a completed step. A second
    Ctrl-C while one is pending stops at once (the last periodic resume state then stands)."""

    def __init__(self) -> None:
        self.critical = False
        self.pending = False
        self.previous: Any = None

    def handler(self, signum, frame) -> None:
        if self.critical and not self.pending:
            self.pending = True
            return
        raise KeyboardInterrupt

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGINT, self.handler)

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


def _on_device(model: torch.nn.Module, device: torch.device) -> bool:
    return all(t.device == device for t in (*model.parameters(), *model.buffers()))


def _train(model, batch_fn, loss_fn, spec, eval_fn, work_dir, progress, desc, parameters, param_stats,
           stats_fn, device, stop_fn=None, initial_optimizer_state=None) -> TrainLog:
    if not _on_device(model, device):
        model.to(device)   # in place: Parameter objects keep their identity, so `parameters` stays valid
    params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
    names = {id(p): n for n, p in model.named_parameters()}
    named = [(names.get(id(p), f"param_{i}"), p) for i, p in enumerate(params)]
    param_rows: list[dict[str, Any]] = []
    custom_rows: list[dict[str, Any]] = []
    groups = lr_scale_groups(named, spec.lr_scales)
    optimizer = (torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
                 if spec.optimizer == "adamw" else
                 torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum,
                                 weight_decay=spec.weight_decay if spec.optimizer == "sgd" else 0.0))
    if initial_optimizer_state is not None:   # the moments only: this run's spec keeps its own settings
        settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        optimizer.load_state_dict(copy.deepcopy(initial_optimizer_state))   # a copy: torch would alias its tensors
        for group, own in zip(optimizer.param_groups, settings):
            group.update(own)
    decoupled_decay = spec.weight_decay if spec.optimizer == "sgdw" else 0.0
    step_rows: list[dict[str, float]] = []
    eval_rows: list[dict[str, float]] = []
    checkpoints: dict[int, dict[str, torch.Tensor]] = {}
    start = 0

    resume_path = Path(work_dir) / RESUME_FILE if work_dir else None
    if resume_path and resume_path.is_file():
        state = _load_resume(resume_path)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ResumeStateError(
                f"resume state {resume_path} does not fit this model ({_first_line(err)}); delete it "
                f"(rm '{resume_path}') and run again to restart this run from step 0") from None
        step_rows, eval_rows, checkpoints, start = state["steps"], state["evals"], state["checkpoints"], state["step"]
        param_rows, custom_rows = state.get("param_stats", []), state.get("custom_stats", [])
    kept = start if start > 0 else None   # the step whose state a resume file holds (None: nothing kept yet)

    def evaluate(step: int, extra: dict[str, float]) -> None:
        row: dict[str, float] = {"step": step, **extra}
        if eval_fn is not None:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                row.update(eval_fn(model))
            model.train(was_training)
        eval_rows.append(row)

    def snapshot(step: int) -> None:
        if step in spec.checkpoint_steps:
            checkpoints[step] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def save(step: int) -> None:
        _save_resume(resume_path, model, optimizer, step_rows, eval_rows, checkpoints, step,
                     param_stats=param_rows, custom_stats=custom_rows)

    guard = _DeferredInterrupt()
    guard.install()
    bar = tqdm(total=spec.steps, initial=start, desc=desc, disable=_progress_disabled(progress),
               file=sys.stderr, dynamic_ncols=True)
    completed = start   # updates whose every record is written: what a resume state may hold
    try:
        if start == 0:
            snapshot(0)
            evaluate(0, {})

        model.train()
        for step in range(start, spec.steps):
            lr = lr_at(spec, step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)   # a resume state from before lr_scales has none
            batch = to_device(batch_fn(step), device)
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip = spec.grad_clip if spec.grad_clip is not None else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip).item()
            done = step + 1
            measure = done % spec.eval_every == 0 or done == spec.steps or done in spec.measure_steps
            before = [p.detach().clone() for p in params] if measure else None
            guard.critical = True   # from here until the step is recorded, the model is ahead of the records
            if decoupled_decay:     # outside the momentum buffer, before the step, as torch's AdamW does it
                with torch.no_grad():
                    for group in optimizer.param_groups:
                        for p in group["params"]:
                            p.mul_(1 - group["lr"] * decoupled_decay)
            optimizer.step()
            loss_value = loss.item()
            step_rows.append({"step": done, "loss": loss_value, "lr": lr, "grad_norm": grad_norm})
            if not math.isfinite(loss_value):
                raise TrainingDivergedError(
                    f"training diverged: the loss became {loss_value} at step {done} (lr={lr:g}); lower the "
                    f"learning rate, e.g. --set lr={spec.lr / 10:g} (it is {spec.lr:g})",
                    step=done, lr=lr, loss=loss_value)
            if measure:
                update_sq = sum(((p.detach() - b) ** 2).sum().item() for p, b in zip(params, before))
                weight_sq = sum((b ** 2).sum().item() for b in before)
                evaluate(done, {"update_to_weight": math.sqrt(update_sq / max(weight_sq, 1e-30)),
                                **optimizer_statistics(model, optimizer)})
                if param_stats:
                    param_rows.extend({"step": done, **r} for r in parameter_statistics(named, optimizer, before, lr))
                if stats_fn is not None:
                    context = StatsContext(model, optimizer, done, lr, names)
                    custom_rows.extend({"step": done, **r} for r in stats_fn(context))
            snapshot(done)
            bar.update(1)
            if done % 50 == 0:
                bar.set_postfix(loss=f"{loss_value:.3f}")
            if resume_path and (done % spec.resume_every == 0) and done < spec.steps:
                save(done)
                kept = done
            completed = done
            guard.critical = False
            if guard.pending:
                raise KeyboardInterrupt
            if measure and stop_fn is not None and stop_fn(eval_rows):
                break
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, TrainingInterrupted):
            raise
        if resume_path is not None and not guard.critical and completed > 0 and completed != kept:
            guard.critical, guard.pending = True, False   # a Ctrl-C during this save waits for it
            save(completed)
            kept = completed
        raise TrainingInterrupted(completed, resume_path.parent if resume_path else None, kept) from None
    finally:
        guard.restore()
        bar.close()
    return TrainLog(pd.DataFrame(step_rows), pd.DataFrame(eval_rows), checkpoints, pd.DataFrame(param_rows),
                    pd.DataFrame(custom_rows), copy.deepcopy(to_cpu(optimizer.state_dict())))


def _progress_disabled(progress: bool | None) -> bool | None:
    if progress is None:
        return None if sys.stderr.isatty() else True
    return not progress


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


_RESUME_KEYS = ("model", "optimizer", "steps", "evals", "checkpoints", "step")


def _load_resume(path: Path) -> dict[str, Any]:
    """The resume state at `path`, on the CPU; a `ResumeStateError` naming the file and the fix if it cannot be
    read (a truncated or overwritten file, a different torch) or lacks what `_save_resume` writes."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - unpickling raises anything: UnpicklingError, EOFError, RuntimeError ...
        problem = _first_line(err)
    else:
        if isinstance(state, dict) and all(k in state for k in _RESUME_KEYS) and isinstance(state["step"], int):
            return state
        problem = "it does not hold a training state"
    raise ResumeStateError(f"resume state {path} is corrupt or unreadable ({problem}); delete it (rm '{path}') "
                           f"and run again to restart this run from step 0")


def _save_resume(path: Path, model, optimizer, step_rows, eval_rows, checkpoints, step: int, **extra) -> None:
    """Write the resume state aside and rename it, so a kill during the write keeps the previous state.
    Tensors are saved as they are (on the training device); `_load_resume` maps them to the CPU."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "steps": step_rows,
                    "evals": eval_rows, "checkpoints": checkpoints, "step": step, **extra}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
