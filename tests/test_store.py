import json

import pandas as pd
import pytest
import torch

from labpy.errors import MissingRunError, StoreReadOnlyError
from labpy.store import RunResult, RunStore, entry_key


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
    entry = tmp_store.put("exp", "k-1", {"label": "k", "scale": "smoke", "config": {"a": 1}}, _result(),
                          {"device": "cpu", "seed": 3})
    assert tmp_store.has("exp", "k-1")
    again = tmp_store.get("exp", "k-1")
    assert again.config == {"a": 1} and again.scale == "smoke" and again.summary == {"final": 1.25}
    pd.testing.assert_frame_equal(again.table("curve"), pd.DataFrame({"step": [0, 1], "loss": [2.5, 1.25]}))
    weights = again.checkpoint("final")
    assert weights["w"].dtype == torch.float32 and torch.equal(weights["w"], torch.tensor([1.0, 2.0, 3.0]))
    assert [e.key for e in tmp_store.entries()] == ["k-1"]
    assert entry.size_bytes() > 0


def test_missing_table_names_the_ones_present(tmp_store):
    entry = tmp_store.put("exp", "k-1", {"label": "k", "scale": "smoke", "config": {}}, _result(), {})
    with pytest.raises(MissingRunError, match="curve"):
        entry.table("nope")


def test_failed_write_leaves_no_entry_and_no_debris(tmp_store, monkeypatch):
    import labpy.store as store_module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        tmp_store.put("exp", "k-1", {"label": "k", "scale": "smoke", "config": {}}, _result(), {})
    assert not tmp_store.has("exp", "k-1")
    assert list((tmp_store.root / "exp").iterdir()) == []


def test_forced_rewrite_replaces_the_entry(tmp_store):
    tmp_store.put("exp", "k-1", {"label": "k", "scale": "smoke", "config": {}}, _result(), {"n": 1})
    tmp_store.put("exp", "k-1", {"label": "k", "scale": "smoke", "config": {}}, _result(), {"n": 2})
    assert tmp_store.get("exp", "k-1").provenance == {"n": 2}
    assert sorted(p.name for p in (tmp_store.root / "exp").iterdir()) == ["k-1"]


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
    assert store.total_size_bytes() < 40 * 2**20, "the committed store is over its budget (tens of MB)"


def test_files_round_trip_and_missing_file_is_named(tmp_store):
    entry = tmp_store.put("exp", "k-1", {"label": "k"}, RunResult(files={"tok.json": b'{"a": 1}'}), {})
    assert entry.file("tok.json").read_bytes() == b'{"a": 1}'
    with pytest.raises(MissingRunError, match="no file 'other.json'"):
        entry.file("other.json")
