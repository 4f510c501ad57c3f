"""When things were written, from git: the blame date of a line, the date a page was first committed.

Why git and not a date typed beside each prediction: a typed date can be wrong or forgotten, and the commit that
wrote a line is the record of when it was written. A shallow checkout has no such record (its oldest commit
claims every line), so every function here answers "unknown" there rather than a wrong date.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterable
from pathlib import Path


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return None if out.returncode else out.stdout


def has_full_history(root: Path) -> bool:
    """A git checkout whose history is not cut short."""
    return _git(root, "rev-parse", "--is-shallow-repository") == "false\n"


def blame_lines(root: Path, page: str) -> list[tuple[dt.datetime, str]]:
    """(author time in UTC, text) of every line of `page` as committed or edited; lines (and pages) not yet
    committed count as now. Empty without full history."""
    if not has_full_history(root):
        return []
    out = _git(root, "blame", "--line-porcelain", "--", page)
    if out is None:                                        # a page never committed: all of it is new
        now = dt.datetime.now(dt.timezone.utc)
        return [(now, line) for line in (root / page).read_text().splitlines()]
    lines, when = [], None
    for line in out.splitlines():
        if line.startswith("author-time "):
            when = dt.datetime.fromtimestamp(int(line.split()[1]), dt.timezone.utc)
        elif line.startswith("\t") and when is not None:
            lines.append((when, line[1:]))
    return lines


def first_committed(root: Path, pages: Iterable[str]) -> dict[str, dt.datetime]:
    """Page -> when the commit that added it was authored (UTC); pages never committed are left out. Empty without
    full history."""
    if not has_full_history(root):
        return {}
    added = {}
    for page in pages:
        out = _git(root, "log", "--diff-filter=A", "--follow", "--format=%at", "--", page)
        if out and out.split():
            added[page] = dt.datetime.fromtimestamp(int(out.split()[-1]), dt.timezone.utc)
    return added
