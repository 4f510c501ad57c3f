"""The questions registry: the user's questions log as data (`questions.yml`), rendered by `questions.qmd`.

Each question: id, text, track, status (OPEN / EXPLORING / ANSWERED / SUPERSEDED), source, optional
sub-questions, and evidence — pages that speak to it, with a note. Pages cite questions with
`lab.show_questions("id", ...)`; the tests check that every cited id exists and that an ANSWERED question
names at least one evidence page holding a verdict table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from IPython.display import Markdown

from .errors import UnknownChoiceError
from .paths import project_root, relative_to_cwd

STATUSES = ("OPEN", "EXPLORING", "ANSWERED", "SUPERSEDED")
REGISTRY_FILE = "questions.yml"


@dataclass(frozen=True)
class Evidence:
    page: str   # path from the project root, e.g. experiments/induction-heads.qmd
    note: str


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    track: str
    status: str
    source: str
    sub: tuple[str, ...] = ()
    evidence: tuple[Evidence, ...] = field(default_factory=tuple)


def load_questions(root: Path | None = None) -> dict[str, Question]:
    """Read and validate the registry: unique ids, known statuses, evidence pages that exist."""
    root = root or project_root()
    raw = yaml.safe_load((root / REGISTRY_FILE).read_text())
    questions: dict[str, Question] = {}
    for item in raw["questions"]:
        qid = item["id"]
        if qid in questions:
            raise ValueError(f"{REGISTRY_FILE}: question id {qid!r} appears twice; ids must be unique")
        if item["status"] not in STATUSES:
            raise UnknownChoiceError("status", item["status"], STATUSES, f"for question {qid!r} in {REGISTRY_FILE}")
        evidence = tuple(Evidence(e["page"], e.get("note", "")) for e in item.get("evidence") or ())
        for e in evidence:
            if not (root / e.page).is_file():
                raise ValueError(f"{REGISTRY_FILE}: question {qid!r} cites evidence page {e.page!r}, which does not exist")
        questions[qid] = Question(qid, item["text"], item["track"], item["status"], item.get("source", ""),
                                  tuple(item.get("sub") or ()), evidence)
    return questions


def _link(page: str, anchor: str = "") -> str:
    return relative_to_cwd(project_root() / page) + (f"#{anchor}" if anchor else "")


def show_questions(*ids: str) -> Markdown:
    """The questions a page addresses, with their status and a link into the questions log."""
    questions = load_questions()
    lines = []
    for qid in ids:
        if qid not in questions:
            raise UnknownChoiceError("question id", qid, questions, f"in {REGISTRY_FILE}")
        q = questions[qid]
        lines.append(f"- **{q.text}** `{q.status}` — [questions log]({_link('questions.qmd', qid)})")
    return Markdown("\n".join(lines))


def questions_log() -> Markdown:
    """The whole log, grouped by track, each question with an anchor, its sub-questions and evidence links."""
    questions = load_questions()
    out = [" · ".join(f"**{s}** {n}" for s, n in status_counts(questions).items()), ""]
    for track in dict.fromkeys(q.track for q in questions.values()):
        out.append(f"## {track}\n")
        for q in (q for q in questions.values() if q.track == track):
            out.append(f"### {q.text} {{#{q.id}}}\n")
            out.append(f"`{q.status}` · source: {q.source} · id `{q.id}`\n")
            out += [f"- {s}" for s in q.sub]
            if q.evidence:
                out.append("\n**Evidence**\n")
                out += [f"- [{e.page}]({_link(e.page)}): {e.note}" for e in q.evidence]
            out.append("")
    return Markdown("\n".join(out))


def status_counts(questions: dict[str, Question] | None = None) -> dict[str, int]:
    questions = load_questions() if questions is None else questions
    return {s: sum(q.status == s for q in questions.values()) for s in STATUSES}
