"""The run store: one folder per (experiment, canonical config, experiment version), written atomically.

Layout of an entry, `runs/<experiment>/<label>-<hash>/`:

    meta.json           experiment, label, scale, version, key, config
    manifest.json       sha256, size and (for tables) row count of every other file, and the config's hash
    summary.json        headline numbers of the run
    provenance.json     device, versions, git commit, seed, wall time
    tables/<name>.csv   metrics (step-indexed curves, per-head scores, ...)
    checkpoints/<name>.safetensors   weights, only where a page needs them (half precision by default)

An entry is built in a hidden sibling folder and renamed into place, so a killed run never leaves half an
entry. Resumable state of an unfinished run lives apart, in `runs/.work/` (ignored by git).

Reads verify the manifest before handing an entry out (`RunStore.get`): a truncated table, an edited config
or a swapped checkpoint raises `DamagedEntryError` naming the entry and the `lab run ... --force` that
re-creates it, so a page can never show numbers from a damaged entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from .errors import DamagedEntryError, MissingRunError, StoreNotWritableError, StoreReadOnlyError
from .paths import runs_dir

READONLY_ENV = "LAB_STORE_READONLY"
WORK_DIR = ".work"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
STEP_CHECKPOINT = re.compile(r"step_(\d+)")   # `checkpoint_name`; older names: `labpy.store_migrate`


# (experiment name, stored config dict) -> that experiment's config dataclass. The experiment registry installs
# it (`set_config_reader`), so the store reads typed configs without importing upward.
_config_reader: Callable[[str, Mapping[str, Any]], Any] | None = None


def set_config_reader(reader: Callable[[str, Mapping[str, Any]], Any]) -> None:
    global _config_reader
    _config_reader = reader


def checkpoint_name(step: int) -> str:
    """The one name of a checkpoint taken at a training step: `step_000200`."""
    return f"step_{step:06d}"


def is_read_only() -> bool:
    return os.environ.get(READONLY_ENV, "").lower() not in ("", "0", "false", "no")


def canonical_json(obj: Any) -> str:
    """Key-sorted, compact JSON: two equal configs give the same bytes, hence the same key."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_digest(config: Mapping[str, Any], version: int) -> str:
    return hashlib.sha256(canonical_json({"config": config, "version": version}).encode()).hexdigest()


def entry_key(label: str, config: Mapping[str, Any], version: int) -> str:
    """`<label>-<10 hex>`: changes when the config or the experiment's declared version does, not on refactors."""
    return f"{label}-{config_digest(config, version)[:10]}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict as the store keeps it (floats in fp16, names sorted): two runs that trained the
    same weights have the same digest, whether or not either stored its checkpoint."""
    digest = hashlib.sha256()
    for name, tensor in sorted(_storable(state, half=True).items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def as_stored(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as the store would keep it (floats rounded to fp16), back in fp32 to compute with: a run that
    measures its own final weights measures what a page reading its checkpoint would."""
    return {name: t.float() if t.is_floating_point() else t for name, t in _storable(state, half=True).items()}


def csv_rows(path: Path) -> int | None:
    """Data rows of a stored table, or None when it no longer parses (a truncated or garbled file)."""
    try:
        return len(pd.read_csv(path))
    except Exception:  # noqa: BLE001 - any parse failure means "damaged", reported by the caller
        return None


def build_manifest(folder: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a reader checks an entry against: every file's sha256 and size, tables' row counts, the config hash."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(folder).as_posix()
        files[rel] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        if rel.startswith("tables/") and rel.endswith(".csv"):
            files[rel]["rows"] = csv_rows(path)
    config_sha = config_digest(meta["config"], meta["version"]) if {"config", "version"} <= set(meta) else None
    return {"format": MANIFEST_FORMAT, "config_sha256": config_sha, "files": files}


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

    @property
    def name(self) -> str:
        """`experiment/key`, from the folder: usable in messages even when meta.json is unreadable."""
        return f"{self.path.parent.name}/{self.path.name}"

    def fix_command(self) -> str:
        """The command that re-creates this entry (best effort when its meta is damaged)."""
        try:
            meta = self._json("meta.json")
            return f"lab run {meta['experiment']} --scale {meta['scale']} --config {meta['label']} --force"
        except (DamagedEntryError, KeyError, TypeError):
            return f"lab run {self.path.parent.name} --force"

    def _json(self, name: str) -> Any:
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            fix = self.fix_command() if name != "meta.json" else f"lab run {self.path.parent.name} --force"
            raise DamagedEntryError(f"run store entry {self.name} is damaged: {name} cannot be read ({err}); "
                                    f"re-create it with `{fix}`") from None

    @cached_property
    def meta(self) -> dict[str, Any]:
        return self._json("meta.json")

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
    def config_dict(self) -> dict[str, Any]:
        """The config exactly as stored (JSON): what the key and the manifest hash."""
        return self.meta["config"]

    @cached_property
    def config(self) -> Any:
        """The config as its experiment's dataclass (`entry.config.steps`) when the experiment is registered;
        the stored dict for entries of experiments no module declares (tests' ad-hoc entries)."""
        return _config_reader(self.experiment, self.config_dict) if _config_reader else self.config_dict

    @cached_property
    def summary(self) -> dict[str, Any]:
        return self._json("summary.json")

    @cached_property
    def provenance(self) -> dict[str, Any]:
        return self._json("provenance.json")

    def problems(self) -> list[str]:
        """Every way this entry differs from its manifest (empty when it is intact)."""
        try:
            meta = self.meta
            manifest = self._json(MANIFEST)
        except DamagedEntryError as err:
            return [str(err).split(" is damaged: ", 1)[-1].split("; re-create", 1)[0]]
        found = []
        if meta.get("key") != self.path.name:
            found.append(f"meta.json names key {meta.get('key')!r} but the entry is stored as {self.path.name!r}")
        try:
            key = entry_key(meta["label"], meta["config"], meta["version"])
        except KeyError as err:
            return found + [f"meta.json lacks {err}"]
        if key != self.path.name:
            found.append(f"its config no longer matches its key (the config hashes to {key!r}): it was edited")
        elif manifest.get("config_sha256") != config_digest(meta["config"], meta["version"]):
            found.append("the manifest's config hash differs from meta.json's config")
        listed = manifest.get("files", {})
        present = {p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file() and p.name != MANIFEST}
        for rel in sorted(set(listed) - present):
            found.append(f"{rel} is missing")
        for rel in sorted(present - set(listed)):
            found.append(f"{rel} is not in the manifest")
        for rel in sorted(set(listed) & present):
            want, path = listed[rel], self.path / rel
            if path.stat().st_size == want.get("bytes") and file_sha256(path) == want.get("sha256"):
                continue
            detail = ""
            if rel.endswith(".json"):
                try:
                    json.loads(path.read_text())
                except ValueError as err:
                    detail = f" (not valid JSON: {err})"
            if "rows" in want:
                rows = csv_rows(path)
                detail = f" ({'unparseable' if rows is None else f'{rows} rows'}; the manifest says {want['rows']})"
            found.append(f"{rel} does not match its manifest{detail}")
        return found

    def file_digest(self, rel: str) -> str:
        """The manifest's sha256 of one of the entry's files: the key of caches derived from it."""
        files = self._json(MANIFEST).get("files", {})
        if rel not in files:
            raise MissingRunError(f"run {self.name} has no file {rel!r} in its manifest")
        return files[rel]["sha256"]

    def verify(self) -> RunEntry:
        """Raise `DamagedEntryError` (one line: the entry, the first problem, the fix) unless the entry is intact."""
        found = self.problems()
        if found:
            more = f" (and {len(found) - 1} more problem{'s' if len(found) > 2 else ''})" if len(found) > 1 else ""
            raise DamagedEntryError(f"run store entry {self.name} is damaged: {found[0]}{more}; "
                                    f"re-create it with `{self.fix_command()}`")
        return self

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

    def checkpoint_steps(self) -> list[int]:
        """Training steps with a stored checkpoint (named by `checkpoint_name`), in order."""
        return sorted(int(m.group(1)) for name in self.checkpoint_names() if (m := STEP_CHECKPOINT.fullmatch(name)))

    def step_checkpoint(self, step: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The weights saved at `step`."""
        if checkpoint_name(step) in self.checkpoint_names():
            return self.checkpoint(checkpoint_name(step), dtype)
        raise MissingRunError(f"run {self.name} has no checkpoint at step {step}; it has steps "
                              f"{', '.join(map(str, self.checkpoint_steps())) or '(none)'}")

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

    def get(self, experiment: str, key: str, produce_with: str = "", verify: bool = True) -> RunEntry:
        """The entry, verified against its manifest (once per process and entry folder state)."""
        if not self.has(experiment, key):
            hint = f"; produce it with: {produce_with}" if produce_with else ""
            raise MissingRunError(f"the run store {self.root} has no run {experiment}/{key}{hint}")
        entry = RunEntry(self.entry_path(experiment, key))
        if verify:
            stamp = _folder_stamp(entry.path)
            if _VERIFIED.get(entry.path) != stamp:
                entry.verify()
                _VERIFIED[entry.path] = stamp
        return entry

    def entries(self, experiment: str | None = None) -> Iterator[RunEntry]:
        folders = [self.root / experiment] if experiment else sorted(self.root.glob("[!.]*"))
        for folder in folders:
            for path in sorted(folder.glob("[!.]*/meta.json")):
                yield RunEntry(path.parent)

    def work_dir(self, experiment: str, key: str) -> Path:
        """Scratch space for a run in progress (resume state); ignored by git, removed once the entry exists."""
        return self.root / WORK_DIR / experiment / key

    def check_writable(self, what: str, experiment: str | None = None) -> None:
        """Refuse before any work starts: read-only mode, or a folder the store could not write into (a run
        that discovers this only after training ends loses the run)."""
        if self.read_only:
            raise StoreReadOnlyError(
                f"the run store is read-only (${READONLY_ENV} is set), so it cannot {what}; "
                f"unset {READONLY_ENV} to train and store runs"
            )
        for folder in ([self.root / experiment] if experiment else []) + [self.root / WORK_DIR]:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".write-probe-{uuid.uuid4().hex[:8]}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as err:
                raise StoreNotWritableError(
                    f"the run store cannot write into {folder} ({err.strerror or err}), so it cannot {what}; "
                    f"make it writable or point LAB_RUNS_DIR at a writable folder"
                ) from None

    def put(self, experiment: str, key: str, meta: dict[str, Any], result: RunResult,
            provenance: dict[str, Any]) -> RunEntry:
        """Write a whole entry aside, then rename it into place: readers see all of it or none of it."""
        self.check_writable(f"store {experiment}/{key}", experiment)
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
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
        write_manifest(folder, meta)  # last: an entry with a manifest is complete

    def total_size_bytes(self) -> int:
        return sum(e.size_bytes() for e in self.entries())


def write_manifest(folder: Path, meta: Mapping[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(build_manifest(folder, meta), indent=1, sort_keys=True))


_VERIFIED: dict[Path, tuple] = {}


def _folder_stamp(folder: Path) -> tuple:
    """Sizes and mtimes of an entry's files: a changed file makes `get` verify the entry again."""
    return tuple(sorted((p.as_posix(), st.st_size, st.st_mtime_ns)
                        for p in folder.rglob("*") if p.is_file() and (st := p.stat())))


def _storable(state: Mapping[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors (safetensors needs them), floats in fp16 when half precision is fine."""
    out = {}
    for name, tensor in state.items():
        t = tensor.detach().cpu()
        if half and t.is_floating_point():
            t = t.half()
        out[name] = t.contiguous()
    return out
