"""The lab's one device policy: where every experiment trains and evaluates.

    lab_device()          CUDA when present, else the CPU; `LAB_DEVICE=cpu|cuda|cuda:N` overrides it
    to_device(batch)      a tensor, or tuples / lists / dicts / dataclasses of tensors, moved there
    to_cpu(state)         the same, back on the CPU (checkpoints and everything stored)
    one_thread()          one torch thread for a scope (tiny models), the previous count restored after

`labpy.train.train` moves the model and every batch to `lab_device()`, so its `eval_fn` sees the model there;
run functions put their fixed eval tensors on `lab_device()` too and hand the store CPU tensors. Provenance
records `device_description(lab_device())`. `use_device("cpu")` pins a scope to one device (an experiment
that measures the CPU itself declares `Experiment(device="cpu")`, and the registry pins its run so).
The CPU default of one torch thread (`labpy/__init__.py`, `TrainSpec.threads`) is unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import torch

from .errors import ConfigError

DEVICE_ENV = "LAB_DEVICE"
_PINNED: contextvars.ContextVar[torch.device | None] = contextvars.ContextVar("lab_device_pinned", default=None)


def parse_device(text: str, source: str = DEVICE_ENV) -> torch.device:
    """`cpu`, `cuda` or `cuda:N` as a `torch.device` that exists on this machine; anything else is a one-line
    `ConfigError` naming `source` (the environment variable, by default) and the valid values."""
    value = text.strip().lower()
    kind, _, index = value.partition(":")
    valid = kind in ("cpu", "cuda") and (not index or (kind == "cuda" and index.isdigit()))
    if not valid:
        raise ConfigError(f"{source}={text!r} is not a device; use cpu, cuda or cuda:N (or unset it: CUDA when "
                          f"present, else cpu)", config=source, field=source, value=text)
    device = torch.device(value)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{source}={text!r} asks for CUDA, but torch {torch.__version__} sees no CUDA device "
                              f"here; use {source}=cpu (or unset it)", config=source, field=source, value=text)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            names = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise ConfigError(f"{source}={text!r}: there is no such device; this machine has {count} CUDA "
                              f"device{'s' if count != 1 else ''} ({names})", config=source, field=source, value=text)
        if device.index is None:   # name the index, so it compares equal to a tensor's device
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def lab_device() -> torch.device:
    """The device experiments train and evaluate on: a pinned scope's (`use_device`), else `$LAB_DEVICE`,
    else `cuda` when CUDA is available, else `cpu`."""
    pinned = _PINNED.get()
    if pinned is not None:
        return pinned
    env = os.environ.get(DEVICE_ENV, "").strip()
    if env and env.lower() != "auto":
        return parse_device(env)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def use_device(device: str | torch.device | None) -> Iterator[torch.device]:
    """Within the block, `lab_device()` returns `device` (None: the policy as usual)."""
    if device is None:
        yield lab_device()
        return
    chosen = device if isinstance(device, torch.device) else parse_device(str(device), "device")
    token = _PINNED.set(chosen)
    try:
        yield chosen
    finally:
        _PINNED.reset(token)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's parameters live (its first parameter's device; the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def to_device(obj: Any, device: str | torch.device | None = None, *, non_blocking: bool = False) -> Any:
    """`obj` with every tensor moved to `device` (default `lab_device()`): a tensor, or (nested) tuples,
    named tuples, lists, dicts and dataclass instances of them; anything else is returned as it is. Tensors
    already there are not copied."""
    device = lab_device() if device is None else torch.device(device)
    return _move(obj, lambda t: t.to(device, non_blocking=non_blocking))


def to_cpu(obj: Any) -> Any:
    """`obj` with every tensor detached and on the CPU (copied only when it was elsewhere): what the store and
    checkpoints keep."""
    return _move(obj, lambda t: t.detach().cpu())


def _move(obj: Any, move) -> Any:
    if isinstance(obj, torch.Tensor):
        return move(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _move(v, move)) for k, v in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):                 # a named tuple
        return type(obj)(*(_move(v, move) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_move(v, move) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _move(getattr(obj, f.name), move) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj


def synchronize(device: torch.device | None = None) -> None:
    """Wait for queued CUDA work (before reading a clock); a no-op on the CPU."""
    device = lab_device() if device is None else torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device) -> str:
    """A human label: 'cpu (2 cores, 1 torch thread)' or 'cuda:0: NVIDIA H200'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}: {torch.cuda.get_device_name(index)}"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({os.cpu_count()} cores, {threads} torch thread{'s' if threads > 1 else ''})"
    return str(device)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread for a scope, restored after: for tiny models it is the fastest on the lab's shared cores,
    and it fixes the order of the sums, hence the bits, so runs are comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
