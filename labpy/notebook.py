"""Page helpers: predictions written before results, their verdicts after, and a provenance badge.

A page registers predictions as code *before* its results cells:

    lab.predict("phase-change", "The repeat loss falls by > 1.5 nats within 20% of training",
                check=lambda r: r["fall"] > 1.5 and r["width_fraction"] < 0.2,
                measure=lambda r: f"fall {r['fall']:.2f} nats over {r['width_fraction']:.0%} of training")

and, once the results dict exists, shows `lab.verdicts(results)`: each prediction held or failed, with the
measured value. A check is never adjusted after the fact; a failed prediction is a finding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from IPython.display import Markdown, display

from .experiments.registry import StoredRuns


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
            mark = "✅ held" if row.verdict == "held" else "❌ failed"
            lines.append(f"| `{row.id}` | {row.prediction} | {row.measured} | {mark} |")
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
    return Verdicts(rows)


def provenance_badge(runs: StoredRuns) -> Markdown:
    """Where the shown results come from: scale, device, commit, date, wall time, versions, per config."""
    lines = [f"::: {{.callout-note appearance=\"simple\" collapse=\"true\"}}\n## Provenance — "
             f"`{runs.experiment.name}` at scale **{runs.scale}**\n",
             "| config | key | device | commit | finished (UTC) | wall time | seed | torch | transformer-lens |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, entry in runs.entries.items():
        p = entry.provenance
        v = p.get("versions", {})
        lines.append(f"| {label} | `{entry.key}` | {p['device']} | `{p['git_commit']}` | {p['finished_utc']} | "
                     f"{p['wall_time_s']:.0f} s | {p['seed']} | {v.get('torch')} | {v.get('transformer-lens')} |")
    lines.append(f"\nReproduce with `{runs.experiment.command(runs.scale)}`.\n:::\n")
    return Markdown("\n".join(lines))


def table(frame: pd.DataFrame, floatfmt: str = ".3f") -> Markdown:
    """A DataFrame as a Markdown table, so Quarto styles it like prose tables."""
    return Markdown(frame.to_markdown(index=False, floatfmt=floatfmt))
