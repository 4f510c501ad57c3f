"""What produced a run: device, library versions, git commit, seed, wall time. Shown on pages as a badge."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import subprocess
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .device import describe, lab_device
from .paths import project_root

_PACKAGES = ("labpy", "torch", "transformer-lens", "transformers", "peft", "bitsandbytes")


def device_description(device: torch.device | str | None = None) -> str:
    """A human label for where the computation ran: the device policy's choice (`labpy.device.lab_device()`)
    unless `device` names another, e.g. 'cpu (2 cores, 1 torch thread)' or 'cuda:0: NVIDIA H200'."""
    return describe(lab_device() if device is None else torch.device(device))


def cpu_description() -> str:
    """The processor and the SIMD kernels torch chose for it, e.g. 'AMD EPYC (torch kernels: AVX2)'. Why: a run
    repeats to the last digit only on the same kernels; on others its rounding differs, which a chaotic run
    (a learning rate at a cliff's edge) can grow into a different final loss."""
    name = ""
    try:
        with open("/proc/cpuinfo") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        pass
    kernels = torch.backends.cpu.get_cpu_capability()
    return f"{name or platform.processor() or 'unknown processor'} (torch kernels: {kernels})"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def code_files(entry_point: Callable) -> list[Path]:
    """The labpy source files an experiment's run function depends on: its module, every labpy module reachable
    from it through imported names, and their packages' `__init__`s. Provenance checks these, not the whole
    package, so work in progress elsewhere in labpy does not mark a run dirty — and code it does use does."""
    seen: set[str] = set()
    todo = [entry_point.__module__]
    while todo:
        name = todo.pop()
        if name in seen or not name.startswith("labpy") or name not in sys.modules:
            continue
        seen.add(name)
        todo += [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]  # parent packages
        for value in vars(sys.modules[name]).values():
            owner = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
            if isinstance(value, types.ModuleType) and owner.startswith(name + "."):
                continue  # a package lists its imported submodules as attributes; that is not a dependency
            if isinstance(owner, str) and owner.startswith("labpy"):
                todo.append(owner)
    return sorted(Path(f) for n in seen if (f := getattr(sys.modules[n], "__file__", None)))


def git_commit(files: Iterable[Path] | None = None) -> str:
    """The commit of the lab's code, with '+dirty' when the code that runs (`files`, default all of labpy) has
    uncommitted changes or is not in git at all (honest provenance)."""
    root = project_root()
    paths = [str(Path(f).resolve().relative_to(root.resolve())) for f in files] if files is not None else ["labpy"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--", *paths], cwd=root, capture_output=True,
            text=True, check=True
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, ValueError, subprocess.CalledProcessError):
        return "unknown"


def collect(seed: int | None, wall_time_s: float, started: dt.datetime, scale: str, commit: str,
            device: torch.device | str | None = None) -> dict[str, Any]:
    """`commit` is taken when the run starts: edits made while it trains do not describe the code that ran.
    `device`: where the run trained and evaluated (default: the device policy's choice now)."""
    return {
        "device": device_description(device),
        "scale": scale,
        "seed": seed,
        "wall_time_s": round(wall_time_s, 2),
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cpu": cpu_description(),
        "versions": package_versions(),
    }
