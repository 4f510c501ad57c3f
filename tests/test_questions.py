"""The questions log's rules (labpy/questions.py): each rule refused on a small temporary log, then the real log
held to them; every question of the user's notes and every page's new question is in the log."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from labpy.errors import UnknownChoiceError
from labpy.questions import (STATUSES, USER_NOTES, QuestionsError, _words, counts_frame, filter_controls,
                             load_questions, note_question_lines, notes_dir, page_new_questions, page_verdicts,
                             questions_log, unlogged, unlogged_note_questions, unlogged_page_questions)

DEMO_PAGE = '''---
title: "Demo"
---

## Predictions

```{python}
lab.predict("loss-falls", "The final loss is below half the initial loss.", check=lambda r: True)
```

## Verdicts

```{python}
lab.verdicts(results)
```

## What we learned

```{python}
lab.claim(f"The loss fell by {drop:.2f} nats over training, faster than expected.", check=True)
lab.claim("Both sides compute the same step: their first losses " + ("agree" if ok else "differ"), check=True)
```

## New questions

- Does the loss keep falling with twice the steps? (feeds `demo`)
- How does the fall move with the
  learning rate?
'''


def _answered(**changes) -> dict:
    q = {"id": "demo", "text": "Does the loss fall?", "track": "Training dynamics (Track A)", "status": "ANSWERED",
         "source": "experiments/demo.qmd § New questions",
         "evidence": [{"page": "experiments/demo.qmd", "note": "measured", "verdicts": ["loss-falls"]}]}
    q.update(changes)
    return {k: v for k, v in q.items() if v is not None}


@pytest.fixture
def project(tmp_path: Path):
    """A tiny project: one page with a prediction, two checked learnings and two new questions."""
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "demo.qmd").write_text(DEMO_PAGE)

    def load(*questions: dict):
        path = tmp_path / "questions.yml"
        path.write_text(yaml.safe_dump({"questions": list(questions)}, allow_unicode=True))
        return load_questions(tmp_path, path)
    load.root = tmp_path
    return load


def _refused(load, *questions: dict, match: str) -> str:
    with pytest.raises(QuestionsError, match=match) as info:
        load(*questions)
    message = str(info.value)
    assert "\n" not in message, f"the refusal should be one line: {message!r}"
    return message


# ---- each rule refuses what breaks it, and accepts what keeps it ----

def test_a_valid_log_loads(project):
    questions = project(_answered(), {"id": "other", "text": "Later?", "track": "Hardware & scale",
                                      "status": "SUPERSEDED", "replaced_by": "demo", "source": "vision.md"})
    assert questions["demo"].evidence[0].verdicts == ("loss-falls",)
    assert questions["other"].replaced_by == "demo"


def test_answered_needs_evidence_naming_a_verdict(project):
    message = _refused(project, _answered(evidence=[{"page": "experiments/demo.qmd", "note": "see the page"}]),
                       match="'demo' is ANSWERED but no evidence names a verdict")
    assert "verdicts:" in message and "EXPLORING" in message          # names the fix
    _refused(project, _answered(evidence=None), match="'demo' is ANSWERED")


def test_answered_may_rest_on_a_checked_learning(project):
    claims = ["The loss fell by", "faster than expected", "Both sides compute the same step"]
    questions = project(_answered(evidence=[{"page": "experiments/demo.qmd", "note": "n", "claims": claims}]))
    assert questions["demo"].evidence[0].claims == tuple(claims)


def test_unknown_verdict_id_is_refused(project):
    bad = [{"page": "experiments/demo.qmd", "note": "n", "verdicts": ["loss-rises"]}]
    message = _refused(project, _answered(evidence=bad), match="cites verdict 'loss-rises' on experiments/demo.qmd")
    assert "loss-falls" in message                                     # lists the page's predictions


def test_claim_not_on_the_page_is_refused(project):
    for quote, match in [("The loss rose by a lot", "no lab.claim"), ("fell by", "at least 3 words")]:
        bad = [{"page": "experiments/demo.qmd", "note": "n", "claims": [quote]}]
        _refused(project, _answered(evidence=bad), match=match)


def test_missing_evidence_page_is_refused(project):
    bad = [{"page": "experiments/gone.qmd", "note": "n", "verdicts": ["loss-falls"]}]
    _refused(project, _answered(evidence=bad), match="'experiments/gone.qmd', which does not exist")


def test_exploring_needs_a_page(project):
    _refused(project, _answered(status="EXPLORING", evidence=None), match="'demo' is EXPLORING but cites no evidence")
    project(_answered(status="EXPLORING", evidence=[{"page": "experiments/demo.qmd", "note": "under way"}]))


def test_open_with_evidence_is_refused(project):
    _refused(project, _answered(status="OPEN"), match="'demo' is OPEN but cites evidence")


def test_untestable_needs_why_and_what_it_would_take(project):
    open_q = _answered(status="OPEN", evidence=None)
    for fields in ({"would_take": "a GPU"}, {"why": "no GPU"}, {}):
        _refused(project, {**open_q, "untestable_here": fields}, match="'demo' is marked untestable_here without")
    questions = project({**open_q, "untestable_here": {"why": "no GPU here", "would_take": "a GPU"}})
    assert questions["demo"].untestable.why == "no GPU here"
    _refused(project, _answered(untestable_here={"why": "w", "would_take": "t"}), match="ANSWERED and untestable_here")


def test_superseded_needs_an_existing_replacement(project):
    superseded = {"id": "old", "text": "Old?", "track": "Hardware & scale", "status": "SUPERSEDED",
                  "source": "vision.md"}
    _refused(project, _answered(), superseded, match="'old' is SUPERSEDED but replaced_by '\\(nothing\\)'")
    _refused(project, _answered(), {**superseded, "replaced_by": "nowhere"}, match="replaced_by 'nowhere' is not")
    _refused(project, {**superseded, "replaced_by": "old"}, match="'old' is SUPERSEDED")
    _refused(project, _answered(replaced_by="demo2"), match="names replaced_by 'demo2' but is ANSWERED")


def test_structure_is_checked(project):
    with pytest.raises(UnknownChoiceError, match="status 'DONE'"):
        project(_answered(status="DONE"))
    with pytest.raises(UnknownChoiceError, match="track 'Vision'"):
        project(_answered(track="Vision"))
    _refused(project, _answered(), _answered(), match="'demo' appears twice")
    _refused(project, _answered(source=None), match="lacks source")
    _refused(project, _answered(source="notes.md"), match="names source 'notes.md'")
    _refused(project, _answered(source="experiments/gone.qmd"), match="source page 'experiments/gone.qmd'")
    _refused(project, _answered(source={"note": "vision.md", "quotes": ["why?"]}), match="quote at least 3 words")


# ---- reading a page's verdicts, and the questions it raises ----

def test_page_verdicts_reads_ids_and_learnings_with_their_sections(project):
    found = page_verdicts(project.root / "experiments" / "demo.qmd")
    assert found.title == "Demo"
    assert found.predictions == {"loss-falls": "The final loss is below half the initial loss."}
    assert list(found.claims) == ["The loss fell by … nats over training, faster than expected.",
                                  "Both sides compute the same step: their first losses …"]
    assert found.verdicts_anchor == "verdicts" and found.claim_anchor("faster than expected") == "what-we-learned"


def test_page_new_questions_joins_wrapped_bullets():
    assert page_new_questions(DEMO_PAGE) == ["Does the loss keep falling with twice the steps? (feeds `demo`)",
                                             "How does the fall move with the learning rate?"]


def test_a_page_question_missing_from_the_log_is_reported(project):
    root = project.root
    (root / "_quarto.yml").write_text("project:\n  type: website\n")
    raised = {"id": "twice", "text": "Does the loss keep falling with twice the steps?", "status": "OPEN",
              "track": "Training dynamics (Track A)", "source": "experiments/demo.qmd § New questions"}
    questions = project(raised)
    assert unlogged_page_questions(questions, root) == [("experiments/demo.qmd", "How does the fall move with the "
                                                         "learning rate?")]
    elsewhere = {**raised, "id": "lr", "text": "How does the fall move with the learning rate?", "source": "vision.md"}
    assert len(unlogged_page_questions(project(raised, elsewhere), root)) == 1   # must cite the page that raised it
    quoted = {**elsewhere, "text": "What does the LR do?",
              "source": {"note": "experiments/demo.qmd", "quotes": ["How does the fall move"]}}
    assert unlogged_page_questions(project(raised, quoted), root) == []


def test_note_question_lines_skip_code_and_blank_prompts():
    note = textwrap.dedent("""\
        - Do neurons fire for class A?
        [ Evidence level: ? ]
        - The "1" is the default.
        ```python
        - Specific question 1?
        ```
        1. **Do our predictions hold?**
        """)
    assert note_question_lines(note) == ["- Do neurons fire for class A?", "1. **Do our predictions hold?**"]


def test_a_note_line_is_logged_by_text_sub_or_quote_of_a_question_citing_that_note(project):
    base = {"id": "a", "track": "Hardware & scale", "status": "OPEN", "source": "vision.md"}
    line = "- Why do backup heads exist? What incentized the model to learn a redundancy?"
    assert unlogged(project({**base, "text": "Why do backup heads exist?"}), "vision.md", [line]) == []
    assert unlogged(project({**base, "text": "Why backups?", "sub": ["What incentized the model to learn"]}),
                    "vision.md", [line]) == []
    assert unlogged(project({**base, "text": "Why backups?"}), "vision.md", [line]) == [line]
    assert unlogged(project({**base, "text": "Why do backup heads exist?"}), "retrospective.md", [line]) == [line]


# ---- the real log ----

def test_the_log_holds_the_rules(root):
    questions = load_questions(root)
    assert len(questions) >= 60
    for q in questions.values():
        if q.status == "ANSWERED":
            assert any(e.verdicts or e.claims for e in q.evidence), q.id
        if q.status == "EXPLORING":
            assert q.evidence, q.id
    assert sum(q.untestable is not None for q in questions.values()) >= 3


def test_every_new_question_raised_on_a_page_is_in_the_log(root):
    missing = unlogged_page_questions(load_questions(root), root)
    assert not missing, "pages raise questions the log does not hold; add each to questions.yml with the page as " \
                        "its source:\n" + "\n".join(f"{page}: {bullet}" for page, bullet in missing)


def test_every_question_in_the_users_notes_is_in_the_log(root):
    seeds = notes_dir(root)
    if not seeds.is_dir():
        pytest.skip(f"the user's notes are not beside this checkout ({seeds})")
    for note in USER_NOTES:
        assert (seeds / note).is_file(), f"{note} is a source of the log but not in {seeds}"
    missing = unlogged_note_questions(seeds, load_questions(root))
    assert not missing, "questions in the user's notes that no question logs (quote them in a question's source):\n" \
                        + "\n".join(f"{note}: {line}" for note, line in missing)


# Lines of the notes that ask or claim something without a question mark (hypotheses, plans, predictions):
# the rule above only sees lines with one, so these are listed by hand, each a fragment of its line.
STATEMENTS_IN_NOTES = {
    "questions-hypotheses.md": ["Focus on when generalizations work after ROME edit",
                                "ATTEMPT: try difference thresholds", "ISSUE: after changing, hard to tell which",
                                'The "1" is the default', "Try to map convolution circuits b/w similar models"],
    "retrospective.md": ["Activation norms increase through layers", "FFN contribution > attention contribution",
                         "Later layers show task-specific patterns",
                         "Low learning rates underfit, high rates destabilize", "Full paper replication",
                         "Implement linear probes", "Study in-context learning through Bayesian lens",
                         "Explore prompt engineering mechanistically", "LoRA rank comparison",
                         "Catastrophic forgetting test suite"],
    "vision.md": ["Make informed decisions about when/how fine-tuning is useful", "Compare LoRA ranks",
                  "Probe what changes in model behavior after fine-tuning", "Test catastrophic forgetting",
                  "Attention pattern visualization across layers", "How patterns change during training",
                  "Comparison between base and fine-tuned models"],
}


def test_the_users_statements_and_plans_are_in_the_log_too(root):
    seeds = notes_dir(root)
    if not seeds.is_dir():
        pytest.skip(f"the user's notes are not beside this checkout ({seeds})")
    questions = load_questions(root)
    for note, fragments in STATEMENTS_IN_NOTES.items():
        lines = (seeds / note).read_text().splitlines()
        for fragment in fragments:
            line = next((line.strip() for line in lines if fragment in line), None)
            assert line, f"{fragment!r} is no longer in {note}: update STATEMENTS_IN_NOTES"
            assert not unlogged(questions, note, [line]), f"no question logs {note}: {line!r}"


def test_every_quote_is_the_sources_own_words(root):
    seeds = notes_dir(root)
    for q in load_questions(root).values():
        for s in q.sources:
            path = root / s.note if s.note.endswith(".qmd") else seeds / s.note
            if not path.is_file():
                continue                           # a user's note when ../shared is absent
            text = _words(path.read_text())
            for quote in s.quotes:
                assert _words(quote) in text, f"{q.id}: {quote!r} is not in {s.note}"


def test_the_rendered_log_shows_every_question_its_evidence_and_filters(root, monkeypatch):
    monkeypatch.chdir(root)
    questions = load_questions(root)
    text = questions_log().data
    for q in questions.values():
        assert f"{{#{q.id}}}" in text and f'data-status="{q.status}"' in text
        for e in q.evidence:
            assert all(f"`{v}`" in text for v in e.verdicts), q.id
    counts = counts_frame(questions)
    assert counts.iloc[-1]["total"] == len(questions)
    assert counts.iloc[:-1][list(STATUSES)].sum().sum() == len(questions)
    controls = filter_controls(questions).data
    assert all(f'<option value="{s}">' in controls for s in STATUSES)
    assert "http" not in controls and "src=" not in controls        # an inline script: no network
