"""Store migrations: rename config fields and legacy checkpoint names of stored runs, or drop checkpoints no
page reads, without retraining.

Why: a config field's name is part of the entry key (the key hashes the config), so renaming a dataclass field
orphans every stored run of it. A migration verifies the entry first (a damaged entry is never laundered into a
sealed one), rewrites the stored config, renames checkpoints such as `step000200` to `checkpoint_name(step)`,
reseals the manifest and moves the entry to the key its new config hashes to. The new entry is built aside and
renamed into place before the old one is removed, so an interruption leaves at least one complete entry.
Thinning (`thin_entry`) keeps the store within its budget: it drops step checkpoints, records the dropped steps
in meta.json (`dropped_checkpoints`) and reseals the same way; the key does not change.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .errors import DamagedEntryError
from .store import RunEntry, RunStore, checkpoint_name, entry_key, write_manifest

LEGACY_CHECKPOINT = re.compile(r"step(\d{6,})")   # `step000200`: the wind tunnels' name before `step_000200`


def renamed_config(config: Mapping[str, object], renames: Mapping[str, str]) -> dict[str, object]:
    """The config with fields renamed in place (the stored order kept); a rename onto an existing field is
    refused: it would silently drop one of two values."""
    clash = [new for old, new in renames.items() if old in config and new in config]
    if clash or len(set(renames.values())) < len(renames):
        raise ValueError(f"cannot rename config fields onto existing or shared names: {clash or dict(renames)}")
    return {renames.get(k, k): v for k, v in config.items()}


def _check_copy(entry: RunEntry, copy: Path) -> None:
    """The copy's files against the manifest they were sealed with (its folder name is not its key yet)."""
    damage = [p for p in RunEntry(copy).problems()
              if not p.startswith("meta.json names key") and "no longer matches its key" not in p]
    if damage:
        raise DamagedEntryError(f"run store entry {entry.name} changed while it was being migrated: {damage[0]}; "
                                f"check it with `lab status --verify`")


def _reseal(store: RunStore, entry: RunEntry, key: str, meta: dict, edit: Callable[[Path], None]) -> RunEntry:
    """Copy the entry aside, check the copy, apply `edit` to it, write `meta` and a new manifest, and swap it in
    under `key`: an interruption leaves at least one complete entry."""
    final = store.entry_path(meta["experiment"], key)
    if final.exists() and final != entry.path:
        raise FileExistsError(f"migrating {entry.name} would overwrite {final}; remove one of them first")
    tmp = entry.path.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    old = entry.path.parent / f".old-{entry.key}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(entry.path, tmp)
    try:
        _check_copy(entry, tmp)               # against the old manifest: nothing damaged gets resealed
        edit(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        write_manifest(tmp, meta)
        os.replace(entry.path, old)           # hidden first: an interruption never leaves half an entry visible
        os.replace(tmp, final)
    except BaseException:
        if old.exists() and not entry.path.exists():
            os.replace(old, entry.path)       # put the original back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    migrated = RunEntry(final)
    migrated.verify()
    return migrated


def migrate_entry(store: RunStore, entry: RunEntry, renames: Mapping[str, str]) -> RunEntry:
    """Apply `renames` (old field -> new field) and the checkpoint naming to one entry; returns the entry as it
    now is (unchanged when there was nothing to do)."""
    entry.verify()
    meta = dict(entry.meta)
    config = renamed_config(meta["config"], renames)
    key = entry_key(meta["label"], config, meta["version"])
    legacy = [p for p in (entry.path / "checkpoints").glob("*.safetensors") if LEGACY_CHECKPOINT.fullmatch(p.stem)]
    if key == entry.key and not legacy:
        return entry

    def rename_checkpoints(folder: Path) -> None:
        for path in folder.glob("checkpoints/*.safetensors"):
            if m := LEGACY_CHECKPOINT.fullmatch(path.stem):
                target = path.with_name(f"{checkpoint_name(int(m.group(1)))}.safetensors")
                if target.exists():
                    raise FileExistsError(f"{entry.name} holds both {path.name} and {target.name}; keep one")
                path.rename(target)

    return _reseal(store, entry, key, meta | {"config": config, "key": key}, rename_checkpoints)


def thin_entry(store: RunStore, entry: RunEntry, keep: Iterable[int] | None = None,
               rows_every: Mapping[str, int] | None = None) -> RunEntry:
    """Drop every step checkpoint but the steps in `keep` (which must exist; None keeps all; named checkpoints
    stay), and keep every n-th row of the tables in `rows_every` (per-step logs no page plots). What was dropped is
    listed in meta.json, so a reader can tell a thinned entry from a run that never saved it."""
    entry.verify()
    steps = entry.checkpoint_steps()
    keep = set(steps) if keep is None else set(keep)
    missing = keep - set(steps)
    if missing:
        raise ValueError(f"{entry.name} has no checkpoint at steps {sorted(missing)}; it has {steps}")
    unknown = set(rows_every or {}) - set(entry.table_names())
    if unknown:
        raise ValueError(f"{entry.name} has no table {sorted(unknown)}; it has {entry.table_names()}")
    dropped = [s for s in steps if s not in keep]
    rows_every = {name: n for name, n in (rows_every or {}).items() if n > 1}
    if not dropped and not rows_every:
        return entry
    meta = dict(entry.meta)
    if dropped:
        meta["dropped_checkpoints"] = sorted({*meta.get("dropped_checkpoints", []), *dropped})
    if rows_every:
        meta["table_rows_every"] = {**meta.get("table_rows_every", {}), **rows_every}

    def drop(folder: Path) -> None:
        for step in dropped:
            (folder / "checkpoints" / f"{checkpoint_name(step)}.safetensors").unlink()
        for name, n in rows_every.items():
            path = folder / "tables" / f"{name}.csv"
            lines = path.read_text().splitlines(keepends=True)
            path.write_text("".join(lines[:1] + lines[1::n]))      # the header, then every n-th row from the first

    return _reseal(store, entry, entry.key, meta, drop)


def migrate_experiment(store: RunStore, experiment: str, renames: Mapping[str, str]) -> list[tuple[str, str]]:
    """Migrate every stored entry of `experiment`; returns (old key, new key) per entry that changed."""
    changed = []
    for entry in list(store.entries(experiment)):
        old, checkpoints = entry.key, entry.checkpoint_names()
        new = migrate_entry(store, entry, renames)
        if new.key != old or new.checkpoint_names() != checkpoints:
            changed.append((old, new.key))
    return changed


def main(argv: list[str] | None = None) -> int:
    """`python -m labpy.store_migrate EXPERIMENT old=new ...`: a one-off rename, printed key by key."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("renames", nargs="*", help="old=new config field renames")
    args = parser.parse_args(argv)
    bad = [r for r in args.renames if r.count("=") != 1]
    if bad:
        parser.error(f"renames must look like old=new, got {bad}")
    renames = dict(r.split("=") for r in args.renames)
    store = RunStore()
    store.check_writable(f"migrate {args.experiment}", args.experiment)
    for old, new in migrate_experiment(store, args.experiment, renames):
        print(f"{args.experiment}/{old} -> {new}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
