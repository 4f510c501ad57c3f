"""The predictions scorecard: every prediction on every page, held or failed, read from what the pages decided.

Why a log and not a re-run: deciding a prediction needs its page's results, which only the page computes (the
whole site takes ~25 minutes). So `lab.verdicts` records each page's decisions as it executes — under
`_site_build/verdicts/`, beside the render's other by-products — together with the sha256 of the page's source.
The scorecard page renders after every page that predicts (see `render:` in `_quarto.yml`) and refuses a log
that is missing or older than its page, so it never shows a stale verdict. When a prediction was written comes
from `git blame` of the line that names it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import LabError
from .history import blame_lines
from .paths import PROJECT_MARKER, project_root

LOG_DIR = Path("_site_build") / "verdicts"
PREDICT_CALL = re.compile(r"""lab\.predict\(\s*["']([^"']+)["']""")   # a prediction's id, as pages write it
KINDS = ("size", "threshold", "direction")
PAPERS = "Papers"


def log_path(root: Path, page: str) -> Path:
    """Where the log of `page` (relative, with /) lives: `_site_build/verdicts/experiments__grokking.json`."""
    return root / LOG_DIR / (page.removesuffix(".qmd").replace("/", "__") + ".json")


def page_source_sha(page: Path) -> str:
    return hashlib.sha256(page.read_bytes()).hexdigest()


def predicted_ids(page: Path) -> list[str]:
    """The ids a page predicts, in the order written."""
    return PREDICT_CALL.findall(page.read_text())


def find_page(ids: Iterable[str], folder: Path) -> Path | None:
    """The one `.qmd` in `folder` that predicts every id in `ids` (a page executes with its folder as working
    directory); None when there is not exactly one (a test, a notebook outside the site)."""
    wanted = set(ids)
    matches = [p for p in sorted(folder.glob("*.qmd")) if wanted and wanted <= set(predicted_ids(p))]
    return matches[0] if len(matches) == 1 else None


def record_verdicts(rows: list[Mapping[str, Any]], folder: Path | None = None) -> Path | None:
    """Write one page's decided predictions to its log; quietly nothing when the caller is not a site page."""
    folder = (folder or Path.cwd()).resolve()
    page = find_page([r["id"] for r in rows], folder)
    if page is None:
        return None
    root = next((f for f in page.parents if (f / PROJECT_MARKER).is_file()), None)
    if root is None:
        return None
    rel = page.relative_to(root)
    out = log_path(root, rel.as_posix())
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"page": rel.as_posix(), "source_sha256": page_source_sha(page),
              "executed_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "predictions": [{k: str(r[k]) for k in ("id", "prediction", "measured", "verdict")} for r in rows]}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False))
    tmp.replace(out)                                   # a reader never sees half a log
    return out


def prediction_kind(statement: str) -> str:
    """Size (a ratio or multiple: "at least 2×", "halves"), threshold (a measured value against a fixed level:
    "at most 0.01 bits", "≥ 80%"), or direction (a comparison or an ordering with no number: "falls", "before").
    Text in parentheses is a reason or a reference ("(the paper: 0.028 bits)"), not the claim, and is skipped."""
    text = re.sub(r"\([^()]*\)", "", statement.lower())
    if re.search(r"\d\s*(×|x\b|times|-fold|fold)|\b(twice|double|doubles|halve|halves|half as|ten times)\b", text):
        return "size"
    if re.search(r"(≤|≥|<|>|at most|at least|below|above|under|over|within|exceeds?|more than|less than|fewer than)"
                 r"[^.;]*?\d", text):
        return "threshold"
    return "direction"


def experiment_tracks(root: Path) -> dict[str, str]:
    """Page -> track: the registry's tracks, as the navbar groups the experiment pages (a test holds the two
    equal), so pages that read another experiment's runs count too; papers have their own column (they test
    someone else's claims)."""
    from .experiments import all_experiments
    from .pages import navbar_groups

    tracks = {e.page: e.track for e in all_experiments()}
    try:
        groups = navbar_groups(root)
    except (KeyError, StopIteration, TypeError):       # a project without the Experiments menu (tests' sites)
        groups = {}
    tracks.update({page: group for group, pages in groups.items() if group for page in pages})
    for page in sorted((root / "papers").glob("*.qmd")):
        tracks[page.relative_to(root).as_posix()] = PAPERS
    return tracks


def predicting_pages(root: Path) -> list[Path]:
    from .pages import list_pages

    return [p for p in list_pages(root) if predicted_ids(p)]


def _read_logs(root: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of every current verdict log, and the pages whose log is missing or older than the page."""
    tracks = experiment_tracks(root)
    rows, stale = [], []
    for page in predicting_pages(root):
        rel = page.relative_to(root).as_posix()
        log = log_path(root, rel)
        record = json.loads(log.read_text()) if log.exists() else None
        if record is None or record["source_sha256"] != page_source_sha(page):
            stale.append(rel)
            continue
        for p in record["predictions"]:
            rows.append({"page": rel, "track": tracks.get(rel, "Other"), "id": p["id"], "statement": p["prediction"],
                         "measured": p["measured"], "verdict": p["verdict"], "kind": prediction_kind(p["prediction"])})
    return rows, stale


def load_verdicts(root: Path | None = None) -> pd.DataFrame:
    """Every prediction of every page, decided: one row each (page, track, id, statement, measured, verdict, kind).

    Raises a LabError naming the pages whose log is missing, or older than the page, and the command that makes it.
    """
    root = root or project_root()
    rows, stale = _read_logs(root)
    if stale:
        raise LabError(f"no current verdicts for {len(stale)} page(s) ({', '.join(stale[:4])}"
                       f"{', …' if len(stale) > 4 else ''}): their log is missing or older than the page; "
                       f"render them first, e.g. `quarto render {stale[0]}` (or the whole site)")
    return pd.DataFrame(rows, columns=["page", "track", "id", "statement", "measured", "verdict", "kind"])


def current_outcomes(root: Path | None = None) -> dict[tuple[str, str], str]:
    """(page, prediction id) -> "held" or "failed", from the pages whose verdict log is current; a page without
    one is simply absent (a reader of a single outcome can say "not rendered yet" instead of failing)."""
    rows, _ = _read_logs(root or project_root())
    return {(r["page"], r["id"]): r["verdict"] for r in rows}


def written_times(root: Path, pages: Iterable[str]) -> dict[tuple[str, str], dt.datetime]:
    """(page, id) -> when the commit that wrote the line naming the prediction was authored (`git blame`, UTC).
    Empty without full git history."""
    dates: dict[tuple[str, str], dt.datetime] = {}
    for rel in pages:
        pending = ""
        for when, line in blame_lines(root, rel):
            text = pending + line
            # the id may sit on the line after `lab.predict(`: carry the call's opening line to the next one
            pending = text if re.search(r"lab\.predict\(\s*$", text) else ""
            for pid in PREDICT_CALL.findall(text):
                dates.setdefault((rel, pid), when)
    return dates


def held_rate(frame: pd.DataFrame, by: str | list[str]) -> pd.DataFrame:
    """Held, failed and the share held, per group."""
    out = (frame.assign(held=frame.verdict.eq("held"), failed=frame.verdict.eq("failed"))
           .groupby(by, sort=False)[["held", "failed"]].sum())
    out["predictions"] = out.held + out.failed
    out["share_held"] = out.held / out.predictions
    return out.reset_index()
