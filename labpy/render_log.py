"""Run `quarto render`, pass its output through, time each page, and fail on any WARNING it prints.

Quarto exits 0 when a page merely warns (an unresolved cross-reference, a missing link target, a cell
option it ignores), so a site can degrade silently. This wrapper turns every warning into a failure, says
which page it came from, and writes each page's render time (execution included) to
`_site_build/page_times.json` for the benchmarks page.

    python -m labpy.render_log quarto render [args...]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")   # Quarto colours its progress and warnings
PAGE_LINE = re.compile(r"^\s*\[\s*(\d+)/(\d+)\]\s+(\S+\.qmd)\s*$")
WARNING_LINE = re.compile(r"^\s*(WARN(ING)?\b|\[WARNING\])", re.I)
OUT_DIR = Path("_site_build")


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m labpy.render_log quarto render [args...]", file=sys.stderr)
        return 2
    OUT_DIR.mkdir(exist_ok=True)
    times: dict[str, float] = {}
    warnings: list[tuple[str, str]] = []
    page, page_start, t0 = "(project)", time.perf_counter(), time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for raw in proc.stdout:   # text mode: the "\r" before each "[i/n] page" also ends a line
        sys.stdout.write(raw)
        sys.stdout.flush()
        line = ANSI.sub("", raw)
        if match := PAGE_LINE.match(line):
            now = time.perf_counter()
            if page != "(project)":
                times[page] = round(now - page_start, 2)
            page, page_start = match.group(3), now
        elif WARNING_LINE.match(line):
            warnings.append((page, line.strip()))
    status = proc.wait()
    end = time.perf_counter()
    if page != "(project)":
        times[page] = round(end - page_start, 2)   # the last page's time includes the site's final steps
    elif (named := [a for a in argv if a.endswith(".qmd")]) and len(named) == 1:
        times[named[0]] = round(end - t0, 2)       # one file rendered: Quarto prints no [i/n] line
    (OUT_DIR / "page_times.json").write_text(json.dumps({"total_s": round(end - t0, 2), "pages": times}, indent=1))
    if status != 0:
        return status
    if not times:
        print("render_log: no page was announced in Quarto's output; cannot time the pages", file=sys.stderr)
        return 1
    if warnings:
        print(f"\nrender_log: {len(warnings)} warning(s); the site must render without any:", file=sys.stderr)
        for where, text in warnings:
            print(f"  {where}: {text}", file=sys.stderr)
        return 1
    print(f"render_log: {len(times)} pages in {end - t0:.0f} s, no warnings; times in {OUT_DIR}/page_times.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
