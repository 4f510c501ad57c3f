"""Where the project and its run store live; found the same way from the CLI, tests and a page's kernel."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_MARKER = "_quarto.yml"


def project_root() -> Path:
    """The folder holding `_quarto.yml`: `$LAB_ROOT`, else the nearest parent of the cwd, else labpy's parent.

    Quarto runs each page with the page's folder as working directory, so walking up from the cwd finds the
    project from any page.
    """
    if env := os.environ.get("LAB_ROOT"):
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_MARKER).is_file():
            return folder
    return Path(__file__).resolve().parent.parent


def runs_dir() -> Path:
    """The run store's root: `$LAB_RUNS_DIR` (tests point it at a temporary folder) or `<project>/runs`."""
    if env := os.environ.get("LAB_RUNS_DIR"):
        return Path(env).resolve()
    return project_root() / "runs"


def relative_to_cwd(path: Path) -> str:
    """A path from the current page's folder, with forward slashes, for links and script tags in HTML."""
    return Path(os.path.relpath(path, Path.cwd())).as_posix()
