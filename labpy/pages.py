"""Execute `.qmd` pages the way Quarto's Jupyter engine does, without Quarto (tests, CI, the build script).

Rules followed (see Quarto's `src/resources/jupyter/notebook.py`): only ```{python} fences are code cells;
`#|` options merge project `execute:` -> front matter `execute:` -> cell; `eval: false` cells never run,
`error: true` cells may raise; a fresh kernel per page with the page's folder as working directory; inline
`` `{python} expr` `` evaluated after the cells in the same kernel. Pages run with the run store read-only, so
a page that needs a missing run fails instead of training. The site itself is built by the real Quarto.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jupytext
import nbformat
import yaml
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from .paths import project_root
from .store import READONLY_ENV

INLINE = re.compile(r"`\{python\}\s+([^`]+?)`")
OPTION_LINE = re.compile(r"^#\|\s?(.*)$")
SKIP_DIRS = {"_site", "_site_build", "_freeze", ".venv", ".quarto", ".quarto-cli", "runs", "node_modules"}


@dataclass
class PageRun:
    path: Path
    seconds: float
    notebook: nbformat.NotebookNode
    inline_values: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def list_pages(root: Path | None = None) -> list[Path]:
    root = root or project_root()
    pages = []
    for path in sorted(root.rglob("*.qmd")):
        if not SKIP_DIRS.intersection(path.relative_to(root).parts):
            pages.append(path)
    return pages


def project_execute_options(root: Path) -> dict[str, Any]:
    config = yaml.safe_load((root / "_quarto.yml").read_text()) or {}
    return dict(config.get("execute") or {})


def navbar_groups(root: Path | None = None) -> dict[str | None, list[str]]:
    """The pages of the navbar's Experiments menu by group heading (a track, see `registry.TRACKS`), in order."""
    root = root or project_root()
    navbar = yaml.safe_load((root / "_quarto.yml").read_text())["website"]["navbar"]["left"]
    menu = next(item for item in navbar if item.get("text") == "Experiments")["menu"]
    groups: dict[str | None, list[str]] = {}
    current = None
    for item in menu:
        if "href" in item:
            groups.setdefault(current, []).append(item["href"])
        elif item.get("text", "---") != "---":
            current = item["text"]
    return groups


def split_options(source: str) -> tuple[dict[str, Any], str]:
    """Split leading `#|` YAML option lines from a cell's code."""
    lines = source.splitlines()
    option_lines = []
    while lines and (match := OPTION_LINE.match(lines[0])):
        option_lines.append(match.group(1))
        lines.pop(0)
    options = yaml.safe_load("\n".join(option_lines)) if option_lines else {}
    return (options or {}), "\n".join(lines)


def parse_page(path: Path, root: Path | None = None) -> tuple[dict[str, Any], nbformat.NotebookNode]:
    """Front matter and a notebook whose code cells carry merged options as metadata and nbclient tags."""
    root = root or project_root()
    text = path.read_text()
    nb = jupytext.reads(text, fmt="Rmd")
    front: dict[str, Any] = {}
    if nb.cells and nb.cells[0].cell_type == "raw" and nb.cells[0].source.startswith("---"):
        front = yaml.safe_load(nb.cells[0].source.strip().strip("-")) or {}
    defaults = {**project_execute_options(root), **dict(front.get("execute") or {})}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        options, code = split_options(cell.source)
        merged = {**defaults, **options}
        cell.source = code
        cell.metadata["quarto"] = merged
        tags = cell.metadata.setdefault("tags", [])
        if merged.get("eval") is False:
            tags.append("skip-execution")
        if merged.get("error") is True:
            tags.append("raises-exception")
        if merged.get("include") is False:
            tags.append("remove_cell")
        if merged.get("echo") is False:
            tags.append("remove_input")
        if merged.get("output") is False:
            tags.append("remove_output")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["front_matter"] = front
    return front, nb


def _inline_cell(exprs: list[str]) -> nbformat.NotebookNode:
    """A cell that evaluates a Markdown cell's inline expressions right after it, where Quarto evaluates them
    (so one that uses a variable from a later cell fails here as it does in `quarto render`); strings are
    shown without quotes."""
    code = (
        "import json as _lab_json\n"
        f"_lab_exprs = {exprs!r}\n"
        "print('LAB-INLINE' + _lab_json.dumps({e: str(eval(e)) for e in _lab_exprs}))"
    )
    return nbformat.v4.new_code_cell(code, metadata={"tags": ["lab-inline"]})


@contextmanager
def _page_environment(root: Path, read_only: bool):
    saved = {k: os.environ.get(k) for k in (READONLY_ENV, "LAB_ROOT", "PYDEVD_DISABLE_FILE_VALIDATION")}
    os.environ["LAB_ROOT"] = str(root)
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    if read_only:
        os.environ[READONLY_ENV] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute_page(path: Path, root: Path | None = None, read_only: bool = True, timeout: int = 1800) -> PageRun:
    """Run one page in a fresh kernel; never raises for page errors, reports them in `PageRun.error`."""
    root = root or project_root()
    path = Path(path).resolve()
    _, nb = parse_page(path, root)
    cells = []
    for cell in nb.cells:
        cells.append(cell)
        if cell.cell_type == "markdown" and (exprs := list(dict.fromkeys(INLINE.findall(cell.source)))):
            cells.append(_inline_cell(exprs))
    nb.cells = cells
    client = NotebookClient(nb, kernel_name="python3", timeout=timeout, allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    start, error, values = time.perf_counter(), None, {}
    with _page_environment(root, read_only):
        try:
            client.execute()
        except CellExecutionError as err:
            error = str(err)
        except Exception as err:  # kernel death, timeouts: still a page failure to report, not a crash
            error = f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    for cell in nb.cells:
        if "lab-inline" in cell.metadata.get("tags", []):
            out = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")
            if "LAB-INLINE" in out:
                values.update(json.loads(out.split("LAB-INLINE", 1)[1]))
    nb.cells = [c for c in nb.cells if "lab-inline" not in c.metadata.get("tags", [])]
    return PageRun(path, seconds, nb, values, error)


def execute_all_pages(pattern: str | None = None, root: Path | None = None,
                      exclude: tuple[str, ...] = ()) -> list[PageRun]:
    """Execute every page (a line each, with its time, on the terminal): a quick check while editing; the
    site itself is built by the real `quarto render` (scripts/render.sh)."""
    root = root or project_root()
    runs = []
    for page in list_pages(root):
        rel = page.relative_to(root).as_posix()
        if (pattern and pattern not in rel) or rel in exclude:
            continue
        run = execute_page(page, root)
        runs.append(run)
        print(f"{'ok  ' if run.ok else 'FAIL'} {run.seconds:6.1f} s  {rel}", flush=True)
        if not run.ok:
            print(run.error[-3000:])
    return runs
