"""What produced a run: device, library versions, git commit, seed, wall time. Shown on pages as a badge."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import subprocess
from typing import Any

import torch

from .paths import project_root

_PACKAGES = ("labpy", "torch", "transformer-lens", "transformers", "peft", "bitsandbytes")


def device_description() -> str:
    """A human label for where the computation ran, e.g. 'cpu (2 cores, 1 torch thread)' or a GPU's name."""
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    import os

    threads = torch.get_num_threads()
    return f"cpu ({os.cpu_count()} cores, {threads} torch thread{'s' if threads > 1 else ''})"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """The commit of the lab's code, with '+dirty' when tracked code had uncommitted changes (honest provenance)."""
    root = project_root()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "labpy"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def collect(seed: int | None, wall_time_s: float, started: dt.datetime, scale: str, commit: str) -> dict[str, Any]:
    """`commit` is taken when the run starts: edits made while it trains do not describe the code that ran."""
    return {
        "device": device_description(),
        "scale": scale,
        "seed": seed,
        "wall_time_s": round(wall_time_s, 2),
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "versions": package_versions(),
    }
