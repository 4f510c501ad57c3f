"""The site_render benchmark: the real `quarto render` of a page in a copy of the project, timed."""

import os

import pytest

from labpy.errors import LabError


def test_site_render_smoke_times_a_page_without_touching_the_site(root, tmp_store, monkeypatch):
    import shutil

    from labpy.experiments import results
    from labpy.experiments.site_render import find_quarto

    try:
        find_quarto()
    except LabError:
        if os.environ.get("LAB_REQUIRE_SITE"):
            raise
        pytest.skip("Quarto is not installed (scripts/render.sh installs it)")
    shutil.copytree(root / "runs", tmp_store.root, dirs_exist_ok=True)   # the page reads the real store
    site = root / "_site" / "questions.html"
    before = site.stat().st_mtime_ns if site.exists() else None
    entry = results("site_render", scale="smoke")["render"]
    pages = entry.table("pages")
    assert pages.page.tolist() == ["questions.qmd"] and pages.seconds.iloc[0] > 0
    assert entry.summary["site_total_s"] >= pages.seconds.iloc[0] - 0.01
    assert (site.stat().st_mtime_ns if site.exists() else None) == before, "the user's _site/ was re-rendered"


def test_site_render_without_quarto_says_how_to_get_it(monkeypatch, tmp_path):
    from labpy.experiments import site_render

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("LAB_ROOT", str(tmp_path))
    with pytest.raises(LabError, match="bash scripts/render.sh"):
        site_render.find_quarto()
