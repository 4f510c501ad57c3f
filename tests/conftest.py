"""Shared fixtures: an empty writable run store in a temporary folder, and the project root."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def tmp_store(tmp_path, monkeypatch):
    """A fresh writable store that trains missing runs; LAB_ROOT pins the project so paths do not depend on the cwd."""
    from labpy.store import READONLY_ENV, RunStore

    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("LAB_ROOT", str(ROOT))
    monkeypatch.delenv(READONLY_ENV, raising=False)
    monkeypatch.setenv("LAB_TRAIN_MISSING", "1")  # tests read smoke runs through results(), which trains them
    return RunStore()
