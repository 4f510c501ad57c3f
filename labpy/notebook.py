"""Page helpers: predictions written before results, their verdicts after, and a provenance badge.

A page registers predictions as code *before* its results cells:

    lab.predict("phase-change", "The repeat loss falls by > 1.5 nats within 20% of training",
                check=lambda r: r["fall"] > 1.5 and r["width_fraction"] < 0.2,
                measure=lambda r: f"fall {r['fall']:.2f} nats over {r['width_fraction']:.0%} of training")

and, once the results dict exists, shows `lab.verdicts(results)`: each prediction held or failed, with the
measured value. A check is never adjusted after the fact; a failed prediction is a finding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from .errors import LabError
from .experiments.registry import StoredRuns
from .scorecard import record_verdicts


@dataclass(frozen=True)
class Prediction:
    id: str
    statement: str
    check: Callable[[Mapping[str, Any]], bool]
    measure: Callable[[Mapping[str, Any]], Any] | None = None


_PREDICTIONS: dict[str, Prediction] = {}


def predict(id: str, statement: str, check: Callable[[Mapping[str, Any]], bool],
            measure: Callable[[Mapping[str, Any]], Any] | None = None) -> None:
    """Register a prediction and display it as a callout; `check(results) -> bool` decides it later.

    It displays itself (rather than returning the callout) so that every prediction of a cell shows.
    """
    if not callable(check):
        raise TypeError(f"prediction {id!r}: check must be a function of the results dict, got {check!r}")
    _PREDICTIONS[id] = Prediction(id, statement, check, measure)
    display(Markdown(f"::: {{.callout-tip appearance=\"simple\"}}\n**Prediction `{id}`** — {statement}\n:::\n"))


def predictions() -> list[Prediction]:
    return list(_PREDICTIONS.values())


def clear_predictions() -> None:
    _PREDICTIONS.clear()


def escape_cell(value: Any) -> str:
    """Text safe inside a Markdown pipe-table cell: a bare `|` would split the cell (`|cosine|` broke two pages)."""
    return str(value).replace("\\|", "|").replace("|", "\\|").replace("\n", " ")


class Verdicts:
    """The outcome of every registered prediction; displays as a table, and feeds inline text."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.frame = pd.DataFrame(rows, columns=["id", "prediction", "measured", "verdict"])

    def held(self, id: str) -> bool:
        row = self.frame[self.frame.id == id]
        if row.empty:
            raise KeyError(f"no prediction {id!r}; predictions: {', '.join(self.frame.id)}")
        return bool(row.verdict.iloc[0] == "held")

    @property
    def n_held(self) -> int:
        return int((self.frame.verdict == "held").sum())

    def summary(self) -> str:
        return f"{self.n_held} of {len(self.frame)} predictions held"

    def _repr_markdown_(self) -> str:
        lines = ["| prediction | statement | measured | verdict |", "|---|---|---|---|"]
        for row in self.frame.itertuples():
            # text symbols (not emoji: a machine without an emoji font shows empty boxes), coloured by CSS
            mark = ('<span class="lab-held">✔ held</span>' if row.verdict == "held"
                    else '<span class="lab-failed">✘ failed</span>')
            cells = [f"`{row.id}`", escape_cell(row.prediction), escape_cell(row.measured), mark]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + f"\n\n: {self.summary()} {{.lab-verdicts}}\n"


def verdicts(results: Mapping[str, Any]) -> Verdicts:
    """Decide every registered prediction against `results` (a dict of measured values)."""
    if not _PREDICTIONS:
        raise RuntimeError("no predictions registered on this page: call lab.predict(...) before the results")
    rows = []
    for p in _PREDICTIONS.values():
        held = bool(p.check(results))
        measured = p.measure(results) if p.measure else ""
        rows.append({"id": p.id, "prediction": p.statement, "measured": measured,
                     "verdict": "held" if held else "failed"})
    record_verdicts(rows)          # for the scorecard: a page's log, found by its predictions' ids
    return Verdicts(rows)


def provenance_badge(runs: StoredRuns) -> Markdown:
    """Where the shown results come from, folded: a one-line title (scale, runs, device, commit, total time) and,
    when opened, a table per config. Folded because 12-19 rows of it above the results buried them."""
    entries = list(runs.entries.items())
    prov = [e.provenance for _, e in entries]
    devices = sorted({p.get("device", "?") for p in prov})
    commits = sorted({str(p.get("git_commit", "?")) for p in prov})
    total_s = sum(float(p.get("wall_time_s") or 0) for p in prov)
    n = len(entries)
    title = (f"Provenance: {n} run{'s' if n != 1 else ''} of `{runs.experiment.name}` at scale {runs.scale}, "
             f"{', '.join(devices)}, commit {', '.join(commits)}, {format_duration(total_s)} of compute")
    lines = [f"::: {{.callout-note collapse=\"true\"}}\n## {title}\n",
             "| config | key | finished (UTC) | wall time | seed | torch | transformer-lens |",
             "|---|---|---|---|---|---|---|"]
    for label, entry in entries:
        p = entry.provenance
        v = p.get("versions", {})
        cells = [label, f"`{entry.key}`", p.get("finished_utc", "?"), format_duration(float(p.get("wall_time_s") or 0)),
                 p.get("seed"), v.get("torch"), v.get("transformer-lens")]
        lines.append("| " + " | ".join(escape_cell(c) for c in cells) + " |")
    lines.append(f"\nReproduce with `{runs.experiment.command(runs.scale)}`.\n:::\n")
    return Markdown("\n".join(lines))


def format_duration(seconds: float) -> str:
    """`42 s`, `3.5 min`, `1.2 h`: wall times span five orders of magnitude across the store."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def human_label(name: str) -> str:
    """`final_val_loss` -> `final val loss`: headers and legends are read by people, not parsed."""
    return str(name).replace("_", " ") if isinstance(name, str) else str(name)


def format_number(value: Any, floatfmt: str | None = None) -> str:
    """A number as a reader wants it: integers plain, ordinary floats to 3 decimals, tiny or huge ones in
    scientific notation (a learning rate of 3e-4 printed as `0.000` was a defect)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    if floatfmt is not None:
        return format(value, floatfmt)
    if isinstance(value, (int, np.integer)) or (math.isfinite(value) and float(value).is_integer() and abs(value) < 1e6):
        return f"{int(value):,}" if abs(value) >= 10_000 else f"{int(value)}"
    magnitude = abs(float(value))
    if not math.isfinite(magnitude):
        return str(value)
    if magnitude >= 1e5 or magnitude < 1e-2:
        return f"{value:.3g}"
    return f"{value:.3f}"


def table(frame: pd.DataFrame, floatfmt: str | None = None, columns: Mapping[str, str] | None = None,
          caption: str = "") -> Markdown:
    """A DataFrame as a Markdown table, so Quarto styles it like prose tables.

    Headers lose their snake_case (or take `columns`' names), numbers get a readable format per value (or
    `floatfmt` for every float), and `|` in any cell is escaped so the table never falls back to raw text.
    """
    frame = frame.rename(columns=dict(columns or {}))
    headers = [escape_cell(human_label(c)) for c in frame.columns]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
                            else "---" for c in frame.columns) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(escape_cell(format_number(v, floatfmt if isinstance(v, (float, np.floating))
                                                                  else None)) for v in row) + " |")
    text = "\n".join(lines)
    if caption:
        text += f"\n\n: {caption}"
    return Markdown(text + "\n")


def config_table(entry: Any, exclude: tuple[str, ...] = ()) -> Markdown:
    """A stored run's config, field by field as stored (the method section's "exactly what ran")."""
    config = {k: v for k, v in entry.config_dict.items() if k not in exclude}
    return table(pd.DataFrame({"config field": [f"`{k}`" for k in config], "value": [str(v) for v in config.values()]}))


@dataclass(frozen=True)
class Claim:
    statement: str
    holds: bool
    measured: str


_CLAIMS: list[Claim] = []


class ClaimContradicted(LabError, AssertionError):
    """A learning on a page no longer matches its data (a re-run changed the numbers): the prose must change."""


def claim(statement: str, check: bool | Callable[[], bool], measured: str = "") -> None:
    """A learning checked against the data, shown like a verdict; the page fails if the data contradict it.

    Predictions may fail (that is a finding); a learning that states a direction, a comparison or a size may
    not, because it is our reading of the data: when a re-run (a new scale, a new seed) contradicts it, the
    page's execution stops here and names the statement, so stale prose can never stand. It displays itself,
    like `predict`, so that every claim of a cell shows.
    """
    holds = bool(check() if callable(check) else check)
    _CLAIMS.append(Claim(statement, holds, str(measured)))
    if not holds:
        raise ClaimContradicted(f"the data contradict this learning: {statement!r} (measured: {measured or 'n/a'}); "
                                f"rewrite it from the new numbers")
    detail = f" — *checked: {measured}*" if measured else " — *checked*"
    display(Markdown(f"::: {{.lab-claim}}\n✔︎ {statement}{detail}\n:::\n"))


def claims() -> list[Claim]:
    return list(_CLAIMS)
