"""What the run store holds against what the registry declares: stored, missing or damaged, per config.

Used by `lab status` and by the front page, so both tell the same story.
"""

from __future__ import annotations

from typing import Any

from .errors import DamagedEntryError
from .experiments import all_experiments
from .store import RunEntry, RunStore


def status_rows(store: RunStore, verify: bool = True) -> list[dict[str, Any]]:
    """One row per (experiment, scale, config): stored, missing or damaged (with the problem), size, wall time.

    `verify` checks every stored entry against its manifest (hashes every file: well under a second for the
    committed store); without it only the JSON files are read.
    """
    rows = []
    for exp in all_experiments():
        for scale, configs in exp.scales.items():
            for label, config in configs.items():
                key = exp.key(config, label)
                row = {"experiment": exp.name, "track": exp.track, "title": exp.title, "page": exp.page,
                       "scale": scale, "config": label, "key": key, "stored": False, "status": "missing",
                       "problem": "", "size_kb": 0.0, "wall_time_s": None, "device": None}
                if store.has(exp.name, key):
                    entry = RunEntry(store.entry_path(exp.name, key))
                    try:
                        if verify:
                            entry.verify()
                        row.update(stored=True, status="stored", size_kb=round(entry.size_bytes() / 1024, 1),
                                   wall_time_s=entry.provenance.get("wall_time_s"),
                                   device=entry.provenance.get("device"))
                    except DamagedEntryError as err:
                        row.update(status="damaged", problem=str(err))
                rows.append(row)
    return rows
