"""Every page executes the way Quarto's Jupyter engine would, from the committed store, read-only."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from labpy.pages import execute_page, export_preview, list_pages, parse_page

ROOT = Path(__file__).resolve().parent.parent
TIMES = ROOT / "_preview" / "page_times.json"
PAGES = list_pages(ROOT)


def _record_time(page: Path, seconds: float) -> None:
    TIMES.parent.mkdir(exist_ok=True)
    times = json.loads(TIMES.read_text()) if TIMES.is_file() else {}
    times[page.relative_to(ROOT).as_posix()] = round(seconds, 2)
    TIMES.write_text(json.dumps(times, indent=1, sort_keys=True))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_executes_from_the_store(page):
    run = execute_page(page, ROOT, read_only=True)
    assert run.ok, f"{page.name} failed:\n{run.error[-4000:]}"
    _record_time(page, run.seconds)
    for expr, value in run.inline_values.items():
        assert value not in ("nan", "None", ""), f"{page.name}: inline `{expr}` gave {value!r}"
    export_preview(run, ROOT)


def _toy_project(tmp_path: Path, body: str) -> Path:
    (tmp_path / "_quarto.yml").write_text("project:\n  type: website\nexecute:\n  warning: false\n")
    (tmp_path / "assets").mkdir()
    (tmp_path / "sub").mkdir()
    page = tmp_path / "sub" / "page.qmd"
    page.write_text(body)
    return page


ENGINE_PAGE = """---
title: Engine rules
execute:
  echo: false
---

Inline: `{python} answer * 2` and `{python} "text"`.

```{python}
import os
answer = 21
cwd = os.getcwd()
```

```python
raise RuntimeError("a plain python block is text, never run")
```

```{python}
#| eval: false
raise RuntimeError("eval: false is never sent")
```

```{python}
#| error: true
raise ValueError("allowed to fail")
```

```{python}
#| include: false
with open("ran.txt", "w") as f:
    f.write(cwd)
```
"""


def test_engine_rules(tmp_path):
    page = _toy_project(tmp_path, ENGINE_PAGE)
    front, nb = parse_page(page, tmp_path)
    assert front["title"] == "Engine rules"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) == 4
    assert code[0].metadata["quarto"] == {"warning": False, "echo": False}
    assert "skip-execution" in code[1].metadata["tags"] and "raises-exception" in code[2].metadata["tags"]
    assert not code[1].source.startswith("#|")
    run = execute_page(page, tmp_path)
    assert run.ok, run.error
    assert run.inline_values == {"answer * 2": "42", '"text"': "text"}
    assert (page.parent / "ran.txt").read_text() == str(page.parent)  # include: false still runs, in the page's folder
    html = export_preview(run, tmp_path).read_text()
    assert "Inline: 42 and text." in html
    assert "with open" not in html  # include: false removes the cell from the output


def test_a_raising_cell_fails_the_page(tmp_path):
    page = _toy_project(tmp_path, "---\ntitle: x\n---\n\n```{python}\n1 / 0\n```\n")
    run = execute_page(page, tmp_path)
    assert not run.ok and "ZeroDivisionError" in run.error


def test_a_page_needing_a_missing_run_fails_naming_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "empty"))
    run = execute_page(ROOT / "experiments" / "induction-heads.qmd", ROOT, read_only=True)
    assert not run.ok and "lab run induction --scale cpu" in run.error


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_charts_display_offline_in_headless_chromium(tmp_path):
    """The preview of the induction page, opened from disk with no network: every chart draws its SVG marks."""
    page = ROOT / "experiments" / "induction-heads.qmd"
    run = execute_page(page, ROOT)
    assert run.ok, run.error
    html = export_preview(run, ROOT)
    charts = sum(o.get("data", {}).get("text/html", "").count('class="lab-chart"')
                 for c in run.notebook.cells for o in c.get("outputs", []))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
                          f"--user-data-dir={tmp_path}", "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=180).stdout
    assert charts >= 5
    assert dom.count('class="marks"') == charts, "some charts did not render offline"
    assert "chart error: " not in dom.replace('"chart error: " + e', "")
