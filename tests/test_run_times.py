"""Stored runs' wall times and how crowded the machine was, against hand-counted intervals."""

import pandas as pd
import pytest

from labpy.run_times import crowding, run_intervals
from labpy.store import RunResult, RunStore


def _put(store, name, start, seconds, device="cpu (2 cores, 1 torch thread)"):
    meta = {"label": name, "scale": "cpu"}
    prov = {"started_utc": start, "wall_time_s": seconds, "device": device, "resumed": False}
    store.put("exp", f"{name}-k", meta, RunResult(tables={"t": pd.DataFrame({"x": [1]})}), prov)


def test_overlaps_are_counted_by_hand(tmp_path):
    store = RunStore(tmp_path / "runs", read_only=False)
    _put(store, "a", "2026-12-01T10:00:00+00:00", 600)          # 10:00-10:10
    _put(store, "b", "2026-12-01T10:05:00+00:00", 600)          # 10:05-10:15: half of a, half of b
    _put(store, "c", "2026-12-01T10:05:00+00:00", 120)          # 10:05-10:07: inside both
    _put(store, "alone", "2026-12-01T12:00:00+00:00", 60)
    _put(store, "gpu", "2026-12-01T10:00:00+00:00", 600, device="cuda:0: NVIDIA H200")   # not the CPU's
    _put(store, "no-start", "", 60)
    runs = run_intervals(store.entries()).set_index("label")
    assert set(runs.index) == {"a", "b", "c", "alone", "gpu"}
    assert runs.loc["a", "minutes"] == 10
    crowd = crowding(runs.reset_index()).set_axis(runs.index)
    assert crowd["a"] == pytest.approx((300 + 120) / 600)
    assert crowd["b"] == pytest.approx((300 + 120) / 600)
    assert crowd["c"] == pytest.approx(2.0)
    assert crowd["alone"] == 0 and crowd["gpu"] == 0
