import json

import pandas as pd
import pytest
import torch

from labpy.errors import MissingRunError, StoreReadOnlyError
from labpy.store import RunResult, RunStore, entry_key


def _meta(config: dict | None = None, label: str = "k") -> tuple[str, dict]:
    """A key and meta as `run_config` writes them (reads verify that the config still hashes to the key)."""
    config = {} if config is None else config
    return entry_key(label, config, 1), {"label": label, "scale": "smoke", "version": 1, "config": config}


KEY, META = _meta()


def _result() -> RunResult:
    return RunResult(tables={"curve": pd.DataFrame({"step": [0, 1], "loss": [2.5, 1.25]})},
                     summary={"final": 1.25}, checkpoints={"final": {"w": torch.tensor([1.0, 2.0, 3.0])}}, seed=3)


def test_key_ignores_field_order_and_changes_with_config_or_version():
    a = entry_key("x", {"lr": 1e-3, "steps": 10}, version=1)
    assert a == entry_key("x", {"steps": 10, "lr": 1e-3}, version=1)
    assert a != entry_key("x", {"lr": 1e-3, "steps": 11}, version=1)
    assert a != entry_key("x", {"lr": 1e-3, "steps": 10}, version=2)
    assert a.startswith("x-") and len(a) == len("x-") + 10


def test_put_then_read_round_trip(tmp_store):
    key, meta = _meta({"a": 1})
    entry = tmp_store.put("exp", key, meta, _result(), {"device": "cpu", "seed": 3})
    assert tmp_store.has("exp", key)
    again = tmp_store.get("exp", key)
    assert again.config == {"a": 1} and again.scale == "smoke" and again.summary == {"final": 1.25}
    pd.testing.assert_frame_equal(again.table("curve"), pd.DataFrame({"step": [0, 1], "loss": [2.5, 1.25]}))
    weights = again.checkpoint("final")
    assert weights["w"].dtype == torch.float32 and torch.equal(weights["w"], torch.tensor([1.0, 2.0, 3.0]))
    assert [e.key for e in tmp_store.entries()] == [key]
    assert entry.size_bytes() > 0


def test_missing_table_names_the_ones_present(tmp_store):
    entry = tmp_store.put("exp", KEY, META, _result(), {})
    with pytest.raises(MissingRunError, match="curve"):
        entry.table("nope")


def test_failed_write_leaves_no_entry_and_no_debris(tmp_store, monkeypatch):
    import labpy.store as store_module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        tmp_store.put("exp", KEY, META, _result(), {})
    assert not tmp_store.has("exp", KEY)
    assert list((tmp_store.root / "exp").iterdir()) == []


def test_forced_rewrite_replaces_the_entry(tmp_store):
    tmp_store.put("exp", KEY, META, _result(), {"n": 1})
    tmp_store.put("exp", KEY, META, _result(), {"n": 2})
    assert tmp_store.get("exp", KEY).provenance == {"n": 2}
    assert sorted(p.name for p in (tmp_store.root / "exp").iterdir()) == [KEY]


def test_read_only_store_refuses_writes(tmp_path):
    store = RunStore(tmp_path, read_only=True)
    with pytest.raises(StoreReadOnlyError, match="LAB_STORE_READONLY"):
        store.put("exp", "k-1", {}, _result(), {})


def test_read_only_missing_run_names_the_command(tmp_store, monkeypatch):
    from labpy.experiments import results

    monkeypatch.setenv("LAB_STORE_READONLY", "1")
    with pytest.raises(MissingRunError, match=r"lab run induction --scale cpu"):
        results("induction")


def test_committed_store_entries_are_complete(root):
    """Every committed entry has its files, valid JSON and provenance naming a device and a commit."""
    store = RunStore(root / "runs", read_only=True)
    entries = list(store.entries())
    assert entries, "the committed run store is empty"
    for entry in entries:
        for name in ("meta.json", "summary.json", "provenance.json"):
            json.loads((entry.path / name).read_text())
        assert entry.provenance["device"] and entry.provenance["git_commit"]
        assert "+dirty" not in entry.provenance["git_commit"], f"{entry} was made by uncommitted code"
        assert entry.table_names() or entry.summary, f"{entry} stores neither tables nor a summary"
    # 48 MiB (was 40 until 2026-12-06, when the store reached 39.8): DESIGN.md's "tens of MB"; the largest entries
    # are checkpoints that pages read (wind tunnels, induction, lab LM), and git compresses the store to about as much
    assert store.total_size_bytes() < 48 * 2**20, "the committed store is over its budget (tens of MB)"


def test_files_round_trip_and_missing_file_is_named(tmp_store):
    entry = tmp_store.put("exp", KEY, META, RunResult(files={"tok.json": b'{"a": 1}'}), {})
    assert entry.file("tok.json").read_bytes() == b'{"a": 1}'
    with pytest.raises(MissingRunError, match="no file 'other.json'"):
        entry.file("other.json")


# ---- the manifest: a damaged entry is reported, never shown (real committed entries, really damaged) ----

def _copy_committed(root, tmp_store, experiment="induction", label="two_layer"):
    import shutil

    (src,) = [p for p in (root / "runs" / experiment).glob(f"{label}-*")]
    dst = tmp_store.root / experiment / src.name
    shutil.copytree(src, dst)
    return dst


def test_every_committed_entry_matches_its_manifest(root):
    store = RunStore(root / "runs", read_only=True)
    damaged = {e.name: e.problems() for e in store.entries() if e.problems()}
    assert not damaged, damaged


def test_a_truncated_table_is_reported_with_the_fix_and_never_read(root, tmp_store):
    from labpy.errors import DamagedEntryError
    from labpy.experiments import results

    path = _copy_committed(root, tmp_store)
    evals = path / "tables" / "evals.csv"
    lines = evals.read_text().splitlines(keepends=True)
    evals.write_text("".join(lines[: len(lines) // 2]))          # what a cut-off copy leaves
    message = (f"run store entry induction/{path.name} is damaged: tables/evals.csv does not match its manifest "
               f"({len(lines) // 2 - 1} rows; the manifest says {len(lines) - 1}); re-create it with "
               f"`lab run induction --scale cpu --config two_layer --force`")
    with pytest.raises(DamagedEntryError) as err:
        tmp_store.get("induction", path.name)
    assert str(err.value) == message
    with pytest.raises(DamagedEntryError, match="tables/evals.csv"):
        results("induction", scale="cpu")


def test_an_edited_config_no_longer_matches_its_key(root, tmp_store):
    from labpy.errors import DamagedEntryError

    path = _copy_committed(root, tmp_store)
    meta = json.loads((path / "meta.json").read_text())
    meta["config"]["steps"] += 1
    (path / "meta.json").write_text(json.dumps(meta, indent=1))
    with pytest.raises(DamagedEntryError, match="config no longer matches its key"):
        tmp_store.get("induction", path.name)


def test_a_swapped_checkpoint_and_a_missing_manifest_are_reported(root, tmp_store):
    from labpy.errors import DamagedEntryError

    path = _copy_committed(root, tmp_store)
    (ckpt,) = list((path / "checkpoints").glob("*.safetensors"))[:1]
    data = bytearray(ckpt.read_bytes())
    data[-8:] = bytes(8)                                            # same size, different weights
    ckpt.write_bytes(bytes(data))
    with pytest.raises(DamagedEntryError, match=f"checkpoints/{ckpt.name} does not match its manifest"):
        tmp_store.get("induction", path.name)
    (path / "manifest.json").unlink()
    with pytest.raises(DamagedEntryError, match="manifest.json cannot be read"):
        tmp_store.get("induction", path.name)


def test_status_names_a_corrupt_provenance_file_and_verify_fails(root, tmp_store, capsys):
    from labpy.cli import main

    path = _copy_committed(root, tmp_store)
    (path / "provenance.json").write_text('{"device": "cpu", "wall')     # a write cut off mid-way
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "damaged" in out and f"induction/{path.name} is damaged: provenance.json does not match its manifest " \
        "(not valid JSON" in out
    assert main(["status", "--verify"]) == 2
    captured = capsys.readouterr()
    assert "1 damaged entry" in captured.err and "Traceback" not in captured.err


def test_an_unwritable_store_is_refused_before_training(tmp_path, monkeypatch):
    """Root ignores permission bits, so the store lies under a regular file: nothing can be created there."""
    from labpy.errors import StoreNotWritableError
    from labpy.experiments import get_experiment, run_config

    (tmp_path / "a-file").write_text("")
    store = RunStore(tmp_path / "a-file" / "runs", read_only=False)
    experiment = get_experiment("induction")
    called = []
    monkeypatch.setattr(type(experiment), "run", property(lambda self: lambda *a: called.append(a)), raising=False)
    config = experiment.configs("smoke")["two_layer"]
    with pytest.raises(StoreNotWritableError, match="cannot write into .*a-file/runs"):
        run_config(experiment, "smoke", "two_layer", config, store)
    assert called == []


def test_step_checkpoints_are_listed_and_loaded_by_step(tmp_store):
    from labpy.store import checkpoint_name

    w = {"w": torch.tensor([1.0])}
    result = RunResult(checkpoints={checkpoint_name(200): w, checkpoint_name(100): {"w": torch.tensor([2.0])},
                                    "final": w})
    entry = tmp_store.put("exp", KEY, META, result, {})
    assert checkpoint_name(200) == "step_000200"
    assert entry.checkpoint_steps() == [100, 200]
    assert entry.step_checkpoint(100)["w"].item() == 2.0 and entry.step_checkpoint(200)["w"].item() == 1.0
    with pytest.raises(MissingRunError, match="no checkpoint at step 300; it has steps 100, 200"):
        entry.step_checkpoint(300)


def test_migration_renames_fields_and_legacy_checkpoints_and_reseals(tmp_store):
    """A renamed config field moves the entry to the key its new config hashes to; `step000100` becomes
    `step_000100`; the result verifies, and its tables and weights are the old ones."""
    from labpy.store_migrate import migrate_experiment

    key, meta = _meta({"batch": 8, "lr": 0.1}, label="a")
    result = _result()
    result.checkpoints = {"step000100": {"w": torch.tensor([2.0])}}
    tmp_store.put("exp", key, meta, result, {})
    changed = migrate_experiment(tmp_store, "exp", {"batch": "batch_size"})
    new_key = entry_key("a", {"batch_size": 8, "lr": 0.1}, 1)
    assert changed == [(key, new_key)] and not tmp_store.has("exp", key)
    entry = tmp_store.get("exp", new_key)      # verifies the resealed manifest
    assert entry.config == {"batch_size": 8, "lr": 0.1} and entry.key == new_key
    assert entry.checkpoint_steps() == [100] and entry.step_checkpoint(100)["w"].item() == 2.0
    assert entry.table("curve").loss.tolist() == [2.5, 1.25]
    assert migrate_experiment(tmp_store, "exp", {"batch": "batch_size"}) == []     # idempotent
    assert not list((tmp_store.root / "exp").glob(".*"))                           # no leftovers


def test_migration_with_only_checkpoints_to_rename_keeps_the_key(tmp_store):
    from labpy.store_migrate import migrate_experiment

    key, meta = _meta({"lr": 0.1}, label="a")
    result = _result()
    result.checkpoints = {"step000300": {"w": torch.tensor([3.0])}}
    tmp_store.put("exp", key, meta, result, {})
    assert migrate_experiment(tmp_store, "exp", {}) == [(key, key)]
    entry = tmp_store.get("exp", key)
    assert entry.checkpoint_names() == ["step_000300"] and entry.step_checkpoint(300)["w"].item() == 3.0
    assert not list((tmp_store.root / "exp").glob(".*"))


def test_thinning_drops_step_checkpoints_records_them_and_reseals(tmp_store):
    """The kept steps load as before, the dropped ones are gone and listed in meta.json, the key stays, and a
    step that was never saved cannot be kept."""
    from labpy.store import checkpoint_name
    from labpy.store_migrate import thin_entry

    key, meta = _meta({"lr": 0.1}, label="a")
    result = _result()
    result.checkpoints = {checkpoint_name(s): {"w": torch.tensor([float(s)])} for s in (0, 100, 200, 300)}
    result.checkpoints["final"] = {"w": torch.tensor([9.0])}
    entry = tmp_store.put("exp", key, meta, result, {})
    with pytest.raises(ValueError, match=r"no checkpoint at steps \[150\]"):
        thin_entry(tmp_store, entry, keep={0, 150})
    thinned = thin_entry(tmp_store, entry, keep={0, 300})
    again = tmp_store.get("exp", key)                     # verifies the resealed manifest
    assert thinned.key == key and again.checkpoint_steps() == [0, 300]
    assert again.step_checkpoint(300)["w"].item() == 300.0 and again.checkpoint("final")["w"].item() == 9.0
    assert again.meta["dropped_checkpoints"] == [100, 200] and again.table("curve").loss.tolist() == [2.5, 1.25]
    assert thin_entry(tmp_store, again, keep={0, 300}).checkpoint_steps() == [0, 300]    # nothing more to drop
    with pytest.raises(ValueError, match=r"no table \['nope'\]"):
        thin_entry(tmp_store, again, rows_every={"nope": 2})
    thin_entry(tmp_store, again, rows_every={"curve": 2})
    rows = tmp_store.get("exp", key)
    assert rows.table("curve").loss.tolist() == [2.5] and rows.meta["table_rows_every"] == {"curve": 2}
    assert not list((tmp_store.root / "exp").glob(".*"))


def test_an_interrupted_migration_leaves_the_original_entry(tmp_store, monkeypatch):
    """Killed between moving the original aside and moving the new entry in: the original comes back whole."""
    import os

    from labpy import store_migrate

    key, meta = _meta({"batch": 8}, label="a")
    tmp_store.put("exp", key, meta, _result(), {})
    real, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(store_migrate.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        store_migrate.migrate_experiment(tmp_store, "exp", {"batch": "batch_size"})
    monkeypatch.setattr(store_migrate.os, "replace", real)
    assert tmp_store.get("exp", key).config == {"batch": 8}          # verified, as before
    assert [p.name for p in (tmp_store.root / "exp").iterdir()] == [key]


def test_migration_refuses_a_damaged_entry(tmp_store):
    """Re-sealing a truncated table would launder it into a 'verified' entry: the migration must refuse."""
    from labpy.errors import DamagedEntryError
    from labpy.store_migrate import migrate_experiment

    key, meta = _meta({"batch": 8}, label="a")
    entry = tmp_store.put("exp", key, meta, _result(), {})
    (entry.path / "tables" / "curve.csv").write_text("step,loss\n0,2.5\n")
    with pytest.raises(DamagedEntryError, match="curve.csv"):
        migrate_experiment(tmp_store, "exp", {"batch": "batch_size"})
    assert tmp_store.has("exp", key)


def test_every_committed_entry_reads_back_as_its_experiments_dataclass(root):
    """`entry.config` is the experiment's dataclass and rebuilds the exact config that made the entry: its key
    hashes the same (so no stored field was renamed without a migration)."""
    from labpy.experiments import get_experiment

    store = RunStore(root / "runs", read_only=True)
    for entry in store.entries():
        experiment = get_experiment(entry.experiment)
        config = entry.config
        assert isinstance(config, experiment.config_type), entry
        assert experiment.key(config, entry.label) == entry.key, f"{entry}: typed config does not hash to its key"
