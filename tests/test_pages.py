"""The emulation of Quarto's Jupyter engine (`lab pages`), on toy pages; the real site is rendered by
`scripts/render.sh` and checked in a browser by test_site_browser.py."""

from pathlib import Path

from labpy.pages import execute_page, parse_page

ROOT = Path(__file__).resolve().parent.parent


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

```{python}
import os
answer = 21
cwd = os.getcwd()
```

Inline: `{python} answer * 2` and `{python} "text"`.

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
    assert "remove_cell" in code[3].metadata["tags"]                   # ... and is left out of the output


def test_a_raising_cell_fails_the_page(tmp_path):
    page = _toy_project(tmp_path, "---\ntitle: x\n---\n\n```{python}\n1 / 0\n```\n")
    run = execute_page(page, tmp_path)
    assert not run.ok and "ZeroDivisionError" in run.error


def test_a_page_never_trains_a_missing_run_even_with_a_writable_store(tmp_path, monkeypatch):
    """`quarto render` of a page whose run is missing must fail with the `lab run` fix, not start training."""
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv("LAB_TRAIN_MISSING", raising=False)
    run = execute_page(ROOT / "experiments" / "induction-heads.qmd", ROOT, read_only=False)
    assert not run.ok and "lab run induction --scale cpu" in run.error
    assert "Traceback" not in run.error.split("MissingRunError")[-1]
    assert not (tmp_path / "empty" / "induction").exists() or not any((tmp_path / "empty" / "induction").iterdir())


def test_inline_expressions_are_evaluated_where_they_stand(tmp_path):
    """As in `quarto render`: an inline expression that needs a variable from a later cell fails."""
    page = _toy_project(tmp_path, "---\ntitle: x\n---\n\n```{python}\na = 1\n```\n\nA is `{python} a`, "
                                  "B is `{python} b`.\n\n```{python}\nb = 2\n```\n")
    run = execute_page(page, tmp_path)
    assert not run.ok and "NameError" in run.error and "'b'" in run.error
