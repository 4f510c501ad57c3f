"""The run store: one folder per (experiment, canonical config, experiment version), written atomically.

Layout of an entry, `runs/<experiment>/<label>-<hash>/`:

    meta.json           experiment, label, scale, version, key, config
    summary.json        headline numbers of the run
    provenance.json     device, versions, git commit, seed, wall time
    tables/<name>.csv   metrics (step-indexed curves, per-head scores, ...)
    checkpoints/<name>.safetensors   weights, only where a page needs them (half precision by default)

An entry is built in a hidden sibling folder and renamed into place, so a killed run never leaves half an
entry. Resumable state of an unfinished run lives apart, in `runs/.work/` (ignored by git).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from .errors import MissingRunError, StoreReadOnlyError
from .paths import runs_dir

READONLY_ENV = "LAB_STORE_READONLY"
WORK_DIR = ".work"


def is_read_only() -> bool:
    return os.environ.get(READONLY_ENV, "").lower() not in ("", "0", "false", "no")


def canonical_json(obj: Any) -> str:
    """Key-sorted, compact JSON: two equal configs give the same bytes, hence the same key."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def entry_key(label: str, config: Mapping[str, Any], version: int) -> str:
    """`<label>-<10 hex>`: changes when the config or the experiment's declared version does, not on refactors."""
    digest = hashlib.sha256(canonical_json({"config": config, "version": version}).encode()).hexdigest()
    return f"{label}-{digest[:10]}"


@dataclass
class RunResult:
    """What an experiment's run function hands to the store."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    checkpoints: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    seed: int | None = None
    half_precision_checkpoints: bool = True
    files: dict[str, bytes] = field(default_factory=dict)   # small artifacts a page or loader needs (a tokenizer)


class RunEntry:
    """A stored run, read lazily: pages load only the tables and checkpoints they use."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"RunEntry({self.experiment}/{self.key})"

    @cached_property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / "meta.json").read_text())

    @property
    def experiment(self) -> str:
        return self.meta["experiment"]

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def label(self) -> str:
        return self.meta["label"]

    @property
    def scale(self) -> str:
        return self.meta["scale"]

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    @cached_property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.path / "summary.json").read_text())

    @cached_property
    def provenance(self) -> dict[str, Any]:
        return json.loads((self.path / "provenance.json").read_text())

    def table_names(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "tables").glob("*.csv"))

    def table(self, name: str) -> pd.DataFrame:
        path = self.path / "tables" / f"{name}.csv"
        if not path.is_file():
            raise MissingRunError(f"run {self.experiment}/{self.key} has no table {name!r}; it has: "
                                  f"{', '.join(self.table_names()) or '(none)'}")
        return pd.read_csv(path)

    def file(self, name: str) -> Path:
        """The path of a stored artifact (see `RunResult.files`)."""
        path = self.path / "files" / name
        if not path.is_file():
            raise MissingRunError(f"run {self.experiment}/{self.key} has no file {name!r}")
        return path

    def checkpoint_names(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "checkpoints").glob("*.safetensors"))

    def checkpoint(self, name: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        path = self.path / "checkpoints" / f"{name}.safetensors"
        if not path.is_file():
            raise MissingRunError(f"run {self.experiment}/{self.key} has no checkpoint {name!r}; it has: "
                                  f"{', '.join(self.checkpoint_names()) or '(none)'}")
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(path).items()}

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


class RunStore:
    """The committed store of runs. `read_only` (default: `$LAB_STORE_READONLY`) forbids writes."""

    def __init__(self, root: Path | None = None, read_only: bool | None = None) -> None:
        self.root = Path(root) if root is not None else runs_dir()
        self.read_only = is_read_only() if read_only is None else read_only

    def entry_path(self, experiment: str, key: str) -> Path:
        return self.root / experiment / key

    def has(self, experiment: str, key: str) -> bool:
        return (self.entry_path(experiment, key) / "meta.json").is_file()

    def get(self, experiment: str, key: str, produce_with: str = "") -> RunEntry:
        if not self.has(experiment, key):
            hint = f"; produce it with: {produce_with}" if produce_with else ""
            raise MissingRunError(f"the run store {self.root} has no run {experiment}/{key}{hint}")
        return RunEntry(self.entry_path(experiment, key))

    def entries(self, experiment: str | None = None) -> Iterator[RunEntry]:
        folders = [self.root / experiment] if experiment else sorted(self.root.glob("[!.]*"))
        for folder in folders:
            for path in sorted(folder.glob("[!.]*/meta.json")):
                yield RunEntry(path.parent)

    def work_dir(self, experiment: str, key: str) -> Path:
        """Scratch space for a run in progress (resume state); ignored by git, removed once the entry exists."""
        return self.root / WORK_DIR / experiment / key

    def check_writable(self, what: str) -> None:
        if self.read_only:
            raise StoreReadOnlyError(
                f"the run store is read-only (${READONLY_ENV} is set), so it cannot {what}; "
                f"unset {READONLY_ENV} to train and store runs"
            )

    def put(self, experiment: str, key: str, meta: dict[str, Any], result: RunResult,
            provenance: dict[str, Any]) -> RunEntry:
        """Write a whole entry aside, then rename it into place: readers see all of it or none of it."""
        self.check_writable(f"store {experiment}/{key}")
        final = self.entry_path(experiment, key)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        try:
            self._write_entry(tmp, meta | {"experiment": experiment, "key": key}, result, provenance)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = final.parent / f".old-{key}-{uuid.uuid4().hex[:8]}"
        if final.exists():          # --force: move the old entry aside first, so one is always complete
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(self.work_dir(experiment, key), ignore_errors=True)
        return RunEntry(final)

    @staticmethod
    def _write_entry(folder: Path, meta: dict[str, Any], result: RunResult, provenance: dict[str, Any]) -> None:
        (folder / "tables").mkdir(parents=True)
        (folder / "checkpoints").mkdir()
        for name, frame in result.tables.items():
            frame.to_csv(folder / "tables" / f"{name}.csv", index=False, float_format="%.6g")
        for name, state in result.checkpoints.items():
            save_file(_storable(state, result.half_precision_checkpoints), folder / "checkpoints" / f"{name}.safetensors")
        if result.files:
            (folder / "files").mkdir()
            for name, data in result.files.items():
                (folder / "files" / name).write_bytes(data)
        (folder / "summary.json").write_text(json.dumps(result.summary, indent=1, sort_keys=True, default=float))
        (folder / "provenance.json").write_text(json.dumps(provenance, indent=1, sort_keys=True))
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: marks a complete entry

    def total_size_bytes(self) -> int:
        return sum(e.size_bytes() for e in self.entries())


def _storable(state: Mapping[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors (safetensors needs them), floats in fp16 when half precision is fine."""
    out = {}
    for name, tensor in state.items():
        t = tensor.detach().cpu()
        if half and t.is_floating_point():
            t = t.half()
        out[name] = t.contiguous()
    return out
