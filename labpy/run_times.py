"""How long each stored run took, and how many other runs shared the machine with it.

The lab's CPU budget is 20 minutes per experiment on two cores, but several runs were once started side by side on
those two cores, so a stored wall time can be mostly waiting. Provenance keeps every run's start and duration;
runs whose intervals overlap ran on the same machine (this lab runs one session at a time), so the overlap says
how crowded a run was: `crowding` is the mean number of other runs alongside it over its wall time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd

from .store import RunEntry

BUDGET_MINUTES = 20.0      # per run of an experiment's `cpu` scale, on two cores (issue "Toy models", Done when)


def run_intervals(entries: Iterable[RunEntry]) -> pd.DataFrame:
    """One row per stored run with a start time and a wall time: experiment, label, scale, device, start, end
    (UTC) and minutes. Runs resumed after an interruption are kept, flagged: their wall time is only the rest."""
    rows = []
    for entry in entries:
        prov = entry.provenance
        if not prov.get("started_utc") or not prov.get("wall_time_s"):
            continue
        start = dt.datetime.fromisoformat(prov["started_utc"])
        seconds = float(prov["wall_time_s"])
        rows.append({"experiment": entry.experiment, "label": entry.label, "scale": entry.scale,
                     "device": str(prov.get("device", "?")), "resumed": bool(prov.get("resumed")),
                     "start": start, "end": start + dt.timedelta(seconds=seconds), "minutes": seconds / 60})
    return pd.DataFrame(rows, columns=["experiment", "label", "scale", "device", "resumed", "start", "end", "minutes"])


def crowding(runs: pd.DataFrame) -> pd.Series:
    """For each run, the mean number of *other* runs on the same kind of device running alongside it: the overlap
    of every other run's interval with its own, summed, over its own duration (0: it ran alone; 2: on average two
    others shared the machine). CPU runs count only CPU runs, GPU runs only GPU runs."""
    on_gpu = runs.device.str.contains("cuda")
    result = []
    for i, run in runs.iterrows():
        others = runs[(runs.index != i) & (on_gpu == on_gpu[i])]
        overlap = (others.end.clip(upper=run.end) - others.start.clip(lower=run.start)).dt.total_seconds().clip(lower=0)
        result.append(overlap.sum() / max((run.end - run.start).total_seconds(), 1e-9))
    return pd.Series(result, index=runs.index, name="crowding")
