"""The whole site through the real `quarto render`: total time and each page's render time, measured together.

Why a stored run and not a timed test: these machines are shared and noisy, so speed goals are shown on the
benchmarks page with the measurement's provenance, not asserted. The render happens in a copy of the project
(the user's `_site/` is untouched) reading the real run store, read-only. The benchmarks page, which shows
these numbers, is replaced in the copy by an empty page (it cannot time its own render).

A page's time runs from Quarto announcing it to announcing the next: kernel start, every cell, and pandoc.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import LabError
from ..paths import project_root, runs_dir
from ..store import READONLY_ENV, RunResult
from ..validation import check_ranges
from .benchmarks import PAGE_OF_RESULTS
from .registry import Experiment, RunContext, register

SKIP = {".git", ".venv", "_site", "_site_build", "_preview", ".quarto", ".quarto-cli", "runs", "__pycache__",
        ".pytest_cache", "_freeze"}


@dataclass(frozen=True)
class SiteRenderConfig:
    pages: tuple[str, ...] = ()      # empty: the whole site; else only these files (the smoke scale)
    page_budget_s: float = 60.0      # goals shown on the page: no page over this ...
    site_budget_s: float = 300.0     # ... and the whole site under this, on 2 cores

    def __post_init__(self) -> None:
        check_ranges(self, positive=("page_budget_s", "site_budget_s"))


def find_quarto() -> str:
    """Quarto on PATH, else the copy `scripts/render.sh` installs into `.quarto-cli/`."""
    found = shutil.which("quarto") or str(project_root() / ".quarto-cli" / "bin" / "quarto")
    if not Path(found).is_file():
        raise LabError("site_render needs Quarto: run `bash scripts/render.sh` once (it installs Quarto into "
                       ".quarto-cli/) or put `quarto` on PATH")
    return found


def copy_project(target: Path) -> None:
    root = project_root()
    shutil.copytree(root, target, ignore=lambda folder, names: [n for n in names if n in SKIP])
    (target / PAGE_OF_RESULTS).write_text('---\ntitle: "Benchmarks"\n---\n\nNot timed: this page shows the timings.\n')


def run(config: SiteRenderConfig, ctx: RunContext) -> RunResult:
    quarto = find_quarto()
    with tempfile.TemporaryDirectory(prefix="lab-site-render-") as tmp:
        project = Path(tmp) / "site"
        copy_project(project)
        env = {**os.environ, "LAB_RUNS_DIR": str(runs_dir()), READONLY_ENV: "1", "LAB_ROOT": str(project),
               "QUARTO_PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        show = ctx.progress if ctx.progress is not None else sys.stderr.isatty()   # Quarto's page list as progress
        done = subprocess.run([sys.executable, "-m", "labpy.render_log", quarto, "render", *config.pages],
                              cwd=project, env=env, capture_output=not show, text=True)
        if done.returncode != 0:
            tail = (done.stdout or "")[-2000:] + (done.stderr or "")[-2000:]
            raise LabError(f"quarto render of the site failed (exit {done.returncode}); fix the render first "
                           f"(`bash scripts/render.sh`). Last output: {tail.strip()[-600:]}")
        times = json.loads((project / "_site_build" / "page_times.json").read_text())
    pages = pd.DataFrame(sorted(times["pages"].items()), columns=["page", "seconds"])
    pages = pages[pages.page != PAGE_OF_RESULTS].reset_index(drop=True)
    slowest = pages.loc[pages.seconds.idxmax()]
    summary = {"site_total_s": float(times["total_s"]), "pages_count": len(pages),
               "slowest_page": str(slowest.page), "slowest_page_s": float(slowest.seconds),
               "pages_over_budget": int((pages.seconds > config.page_budget_s).sum())}
    return RunResult(tables={"pages": pages}, summary=summary)


register(Experiment(
    name="site_render",
    title="Rendering the whole site with Quarto",
    track="The lab itself",
    page=PAGE_OF_RESULTS,
    version=1,
    config_type=SiteRenderConfig,
    scales={"smoke": {"render": SiteRenderConfig(pages=("questions.qmd",))},
            "cpu": {"render": SiteRenderConfig()}},
    run=run,
    description="quarto render of every page, timed per page, in a copy of the project reading the store.",
))
