"""The rendered site as a reader's browser sees it: headless Chromium opens every page of the real `_site/`.

Checks, per page: no request leaves the local server (math, charts and scripts all offline), no console
error, every chart draws marks, no Markdown table left as raw pipe text, no raw TeX. A full-page screenshot
of each lands in `_site_build/screenshots/` for developers to look at.

`_site/` comes from `bash scripts/render.sh` (the test command renders first and sets LAB_REQUIRE_SITE=1, so
a missing site or browser fails there instead of skipping).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "_site"
SHOTS = ROOT / "_site_build" / "screenshots"
REQUIRED = os.environ.get("LAB_REQUIRE_SITE", "").lower() not in ("", "0", "false", "no")
PAGES = sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")
               if "site_libs" not in p.parts) if SITE.is_dir() else []

# Marks Vega draws inside a chart's SVG: a chart whose every mark group is empty drew nothing.
MARKS = ("svg .role-mark > path, svg .role-mark > rect, svg .role-mark > circle, svg .role-mark > line, "
         "svg .role-mark > text, svg .role-mark > g > path")
CHART_STATE = f"""() => Array.from(document.querySelectorAll('.lab-chart')).map(div => ({{
  id: div.id,
  marks: div.querySelectorAll('{MARKS}').length,
  error: div.innerText.includes('chart error'),
}}))"""
# A page's charts are inline scripts, parsed one by one, and vegaEmbed draws each asynchronously and fills its mark
# groups one by one: a page with many charts (thousands of SVG marks) can take seconds on a loaded machine, and
# `networkidle` can come before the parser reaches the last chart. So wait, up to CHART_WAIT_MS, until the document
# is parsed and loaded and every chart shows what the assertion counts (a mark, or an error). Waiting only for each
# chart's first mark group once saw 19 of the superposition page's 20 charts, the last of them still empty (CI on
# 07db8b4).
ALL_CHARTS_SETTLED = f"""() => document.readyState === 'complete' &&
  Array.from(document.querySelectorAll('.lab-chart')).every(div =>
    div.querySelectorAll('{MARKS}').length > 0 || div.innerText.includes('chart error'))"""
CHART_WAIT_MS = 20_000
RAW_TABLE = re.compile(r"^\s*\|.*\|\s*$")
RAW_TEX = re.compile(r"\$\$|\\(frac|sum|mathrm|text|log|hat|le|ge)\b|\$[^$\s][^$]*\\[a-z]+[^$]*\$")


def _require(condition: bool, reason: str) -> None:
    if condition:
        return
    if REQUIRED:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server():
    _require(bool(PAGES), "no rendered site in _site/: run `bash scripts/render.sh` first")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    _require(chromium is not None, "no Chromium on this machine (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api") if not REQUIRED else __import__(
        "playwright.sync_api", fromlist=["sync_playwright"])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


EXPLORERS = {"experiments/attention-heads.html": 4}   # pages with attention explorers, and how many
WEIGHTS = ("r => Array.from(r.querySelectorAll('.lab-explorer-token'))"
           ".map(s => parseFloat(s.dataset.weight || '0'))")


def _induction_in_the_explorer(root) -> dict:
    """On a repeated-random snippet opened at an induction head, hovering a second-copy token should make the
    token after its earlier copy the darkest: the explorer shows what the head scores measure. The page's head
    scores above 0.5 there, so it must do so for most second-copy tokens (the first few may still look at the
    sink); the misses, (hovered, darkest), are reported when it does not."""
    tokens = root.locator(".lab-explorer-token")
    half = tokens.count() // 2
    misses = []
    for k in range(half):
        tokens.nth(half + k).hover()
        weights = root.evaluate(WEIGHTS)
        darkest = max(range(len(weights)), key=weights.__getitem__)
        if darkest != k + 1:
            misses.append((half + k, darkest))
    return {"induction_misses": misses if len(misses) >= half / 2 else []}


def _exercise_explorers(page) -> list[dict]:
    """Hover a token of each attention explorer (labpy.explorer), change the head and flip the direction: the
    tokens must take colours from the weights, and the status line must name the hovered token."""
    found = []
    for index in range(page.locator(".lab-explorer").count()):
        root = page.locator(".lab-explorer").nth(index)
        tokens = root.locator(".lab-explorer-token")
        target = min(5, tokens.count() - 1)
        tokens.nth(target).hover()
        coloured = root.evaluate("r => Array.from(r.querySelectorAll('.lab-explorer-token'))"
                                 ".filter(s => s.style.backgroundColor).length")
        weights = sum(root.evaluate(WEIGHTS))
        status = root.locator(".lab-explorer-status").inner_text()
        title = root.locator(".lab-explorer-title").inner_text() if root.locator(".lab-explorer-title").count() else ""
        induction = {"induction_misses": []}
        if "repeated random" in title:
            induction = _induction_in_the_explorer(root)
            tokens.nth(target).hover()
        root.locator(".lab-explorer-mode").select_option("in")      # redraws the token last hovered
        status_in = root.locator(".lab-explorer-status").inner_text()
        found.append({"explorer": index, "title": title, "coloured": coloured, "row_sum": weights, "status": status,
                      "status_in": status_in, **induction,
                      "ok": coloured > 0 and abs(weights - 1) < 0.05 and f"token {target}" in status
                      and "gets most attention from" in status_in and f"token {target}" in status_in
                      and not induction["induction_misses"]})
    return found


@pytest.mark.parametrize("page_path", PAGES or ["(no site)"])
def test_page_in_a_browser(page_path, server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside, errors = [], []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server, "data:", "blob:",
                                                                                 "about:")) else None)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"{r.status} for {r.url}") if r.status >= 400 else None)
    page.goto(f"{server}/{page_path}", wait_until="networkidle")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout   # importable: the browser fixture ran
    try:
        page.wait_for_function(ALL_CHARTS_SETTLED, timeout=CHART_WAIT_MS)
    except PlaywrightTimeout:   # the assertion below names the charts still blank
        pass
    charts = page.evaluate(CHART_STATE)
    explorers = _exercise_explorers(page)
    text = page.evaluate("() => document.querySelector('main') ? document.querySelector('main').innerText : ''")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / (page_path.replace("/", "__").removesuffix(".html") + ".png")), full_page=True)
    page.close()

    assert not outside, f"{page_path} reaches beyond the local server: {sorted(set(outside))[:5]}"
    assert not errors, f"{page_path} logs console errors: {errors[:3]}"
    blank = [c["id"] for c in charts if c["marks"] == 0 or c["error"]]
    assert not blank, f"{page_path}: {len(blank)} of {len(charts)} charts draw nothing: {blank}"
    raw_rows = [line for line in text.splitlines() if RAW_TABLE.match(line)]
    assert not raw_rows, f"{page_path} shows a Markdown table as raw text: {raw_rows[:2]}"
    assert len(explorers) == EXPLORERS.get(page_path, 0), \
        f"{page_path}: {len(explorers)} attention explorers drawn, expected {EXPLORERS.get(page_path, 0)}"
    dead = [e for e in explorers if not e["ok"]]
    assert not dead, f"{page_path}: attention explorer does not respond: {dead[:2]}"
    tex = RAW_TEX.search(text)
    assert not tex, f"{page_path} shows raw TeX near {text[max(0, tex.start() - 40):tex.end() + 40]!r}"
