"""The scorecard: pages log what they decided, the log is refused when stale, kinds and dates are read right."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from labpy import history, notebook, scorecard as sc
from labpy.errors import LabError

PAGE = '''---
title: "A page"
---

```{python}
lab.predict("rises", "The loss falls.", check=lambda r: r["x"] > 0)
lab.predict(
    "big", "At least 2× larger.", check=lambda r: r["x"] > 2)
```
'''


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "_quarto.yml").write_text("project:\n  type: website\n")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "a.qmd").write_text(PAGE)
    (tmp_path / "experiments" / "other.qmd").write_text(PAGE.replace('"big"', '"small"'))
    return tmp_path


def rows(verdict_big: str = "failed") -> list[dict[str, str]]:
    return [{"id": "rises", "prediction": "The loss falls.", "measured": "1.0", "verdict": "held"},
            {"id": "big", "prediction": "At least 2× larger.", "measured": "1.5×", "verdict": verdict_big}]


@pytest.mark.parametrize("statement,kind", [
    ("Soft targets at least halve the KL.", "size"),
    ("The MLP's entropy MAE is at least 50× the transformer's.", "size"),
    ("The entropy MAE is at most 0.01 bits.", "threshold"),
    ("PC1 ≥ 80% of the variance.", "threshold"),
    ("Attention settles before the representation does.", "direction"),
    ("The repeat loss falls.", "direction"),
    ("With hard labels, V = 20 ends with a larger MAE than V = 10 (twice the positions).", "direction"),
])
def test_prediction_kind_by_hand(statement, kind):
    assert sc.prediction_kind(statement) == kind


def test_a_page_logs_its_verdicts_and_the_scorecard_reads_them(site):
    log = sc.record_verdicts(rows(), folder=site / "experiments")
    assert log == site / "_site_build" / "verdicts" / "experiments__a.json"
    record = json.loads(log.read_text())
    assert record["page"] == "experiments/a.qmd" and record["source_sha256"] == sc.page_source_sha(site / "experiments" / "a.qmd")
    sc.record_verdicts([dict(r, id="small" if r["id"] == "big" else r["id"]) for r in rows("held")],
                       folder=site / "experiments")
    scores = sc.load_verdicts(site)
    assert sorted(zip(scores.page, scores.id, scores.verdict)) == [
        ("experiments/a.qmd", "big", "failed"), ("experiments/a.qmd", "rises", "held"),
        ("experiments/other.qmd", "rises", "held"), ("experiments/other.qmd", "small", "held")]
    assert set(scores.kind) == {"direction", "size"}
    rate = sc.held_rate(scores, "page").set_index("page")
    assert rate.loc["experiments/a.qmd"].tolist() == [1, 1, 2, 0.5]      # held, failed, predictions, share


def test_a_stale_or_missing_log_is_refused_with_the_command_that_makes_it(site):
    sc.record_verdicts(rows(), folder=site / "experiments")
    with pytest.raises(LabError, match=r"no current verdicts for 1 page\(s\) \(experiments/other\.qmd\).*"
                                       r"quarto render experiments/other\.qmd"):
        sc.load_verdicts(site)
    sc.record_verdicts([dict(r, id="small" if r["id"] == "big" else r["id"]) for r in rows()], folder=site / "experiments")
    page = site / "experiments" / "a.qmd"
    page.write_text(page.read_text() + "\nEdited after it ran.\n")
    with pytest.raises(LabError, match=r"experiments/a\.qmd\).*missing or older than the page"):
        sc.load_verdicts(site)


def test_current_outcomes_skip_a_stale_page_instead_of_failing(site):
    sc.record_verdicts(rows(), folder=site / "experiments")
    assert sc.current_outcomes(site) == {("experiments/a.qmd", "rises"): "held", ("experiments/a.qmd", "big"): "failed"}
    page = site / "experiments" / "a.qmd"
    page.write_text(page.read_text() + "\nEdited after it ran.\n")
    assert sc.current_outcomes(site) == {}


def test_the_questions_log_shows_each_cited_predictions_outcome(site, monkeypatch):
    from labpy import questions as qlog

    monkeypatch.setenv("LAB_ROOT", str(site))
    evidence = qlog.Evidence(page="experiments/a.qmd", note="measured", verdicts=["rises", "big"])
    before = "\n".join(qlog._evidence_lines(evidence, sc.current_outcomes(site)))
    assert "held ✔" not in before and "failed ✘" not in before                # no log yet: no outcome shown
    sc.record_verdicts(rows(), folder=site / "experiments")
    lines = qlog._evidence_lines(evidence, sc.current_outcomes(site))
    assert "`rises`" in lines[1] and lines[1].index("held ✔") < lines[1].index("`big`") < lines[1].index("failed ✘")


def test_no_log_outside_a_site_or_when_the_page_is_ambiguous(site, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("notebook")
    (elsewhere / "x.qmd").write_text(PAGE)                       # a page, but no _quarto.yml above it
    assert sc.record_verdicts(rows(), folder=elsewhere) is None
    assert sc.record_verdicts([rows()[0]], folder=site / "experiments") is None   # "rises" is on both pages
    assert not (site / "_site_build").exists()


def test_lab_verdicts_writes_the_log_of_the_page_it_runs_in(site, monkeypatch):
    monkeypatch.chdir(site / "experiments")
    notebook.clear_predictions()
    try:
        notebook.predict("rises", "The loss falls.", check=lambda r: r["x"] > 0)
        notebook.predict("big", "At least 2× larger.", check=lambda r: r["x"] > 2, measure=lambda r: f"{r['x']}×")
        shown = notebook.verdicts({"x": 1.5})
    finally:
        notebook.clear_predictions()
    logged = json.loads((site / "_site_build" / "verdicts" / "experiments__a.json").read_text())["predictions"]
    assert [(p["id"], p["verdict"], p["measured"]) for p in logged] == [("rises", "held", ""), ("big", "failed", "1.5×")]
    assert shown.n_held == 1


def git(repo: Path, *args: str, date: str | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    if date:
        env.update(GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


def test_prediction_dates_come_from_the_commit_that_wrote_their_line(site, tmp_path_factory):
    git(site, "init", "-q")
    git(site, "add", "-A")
    git(site, "commit", "-qm", "first", date="2026-11-21T10:00:00+00:00")
    page = site / "experiments" / "a.qmd"
    page.write_text(page.read_text().replace('"big", "At least 2× larger."', '"big", "At least 3× larger."'))
    git(site, "commit", "-qam", "reworded", date="2026-12-01T10:00:00+00:00")
    dates = sc.written_times(site, ["experiments/a.qmd"])
    assert {k: v.date().isoformat() for k, v in dates.items()} == {
        ("experiments/a.qmd", "rises"): "2026-11-21", ("experiments/a.qmd", "big"): "2026-12-01"}
    (site / "experiments" / "never.qmd").write_text(PAGE)                   # not committed yet: written today
    fresh = sc.written_times(site, ["experiments/never.qmd"])
    assert {v.date() for v in fresh.values()} == {dt.datetime.now(dt.timezone.utc).date()} and len(fresh) == 2
    added = history.first_committed(site, ["experiments/a.qmd", "experiments/never.qmd"])
    assert list(added) == ["experiments/a.qmd"] and added["experiments/a.qmd"].date().isoformat() == "2026-11-21"

    shallow = tmp_path_factory.mktemp("shallow") / "clone"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{site}", str(shallow)], check=True)
    assert not history.has_full_history(shallow)
    assert sc.written_times(shallow, ["experiments/a.qmd"]) == {} and history.first_committed(shallow, ["experiments/a.qmd"]) == {}


def test_held_rate_by_hand():
    frame = pd.DataFrame({"track": ["A", "A", "A", "B"], "verdict": ["held", "failed", "held", "failed"]})
    rate = sc.held_rate(frame, "track").set_index("track")
    assert rate.loc["A", "share_held"] == pytest.approx(2 / 3) and rate.loc["B"].tolist()[:3] == [0, 1, 1]
