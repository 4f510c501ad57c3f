"""render_log reads Quarto's coloured progress lines: per-page times, and any WARN line fails the build."""

import json
import subprocess
import sys

FAKE = r'''
import sys
sys.stdout.write("\x1b[1m\x1b[34m\r[1/2] index.qmd\x1b[39m\x1b[22m\n")
sys.stdout.write("Starting python3 kernel...[IPKernelApp] WARNING | Kernel is running over TCP\n")
{warn}
sys.stdout.write("\x1b[1m\x1b[34m\r[2/2] questions.qmd\x1b[39m\x1b[22m\nOutput created: _site/index.html\n")
'''


def _render(tmp_path, warn: str = "") -> subprocess.CompletedProcess:
    fake = tmp_path / "fake_quarto.py"
    fake.write_text(FAKE.format(warn=warn))
    return subprocess.run([sys.executable, "-m", "labpy.render_log", sys.executable, str(fake)], cwd=tmp_path,
                          capture_output=True, text=True)


def test_pages_are_timed_through_colour_codes(tmp_path):
    done = _render(tmp_path)
    assert done.returncode == 0, done.stderr
    times = json.loads((tmp_path / "_site_build" / "page_times.json").read_text())
    assert list(times["pages"]) == ["index.qmd", "questions.qmd"] and times["total_s"] >= 0


def test_a_coloured_warning_fails_and_names_its_page(tmp_path):
    done = _render(tmp_path, 'sys.stdout.write("\\x1b[33mWARN (path/to/x.qmd): unresolved link\\x1b[39m\\n")')
    assert done.returncode == 1
    assert "index.qmd: WARN (path/to/x.qmd): unresolved link" in done.stderr
