"""The questions registry: the user's questions log as data (`questions.yml`), rendered by `questions.qmd`.

Each question: id, text, track, status (OPEN / EXPLORING / ANSWERED / SUPERSEDED), where it came from
(`source`: a note of the user's or the page that raised it, with the quoted words), sub-questions, and
evidence — pages that speak to it, each naming the verdicts it rests on: prediction ids (`verdicts:`, from
`lab.predict("ID", ...)` on that page) and checked learnings (`claims:`, words quoted from a `lab.claim(...)`
statement there). The loader holds every question to the log's rules, so a status can only say what the pages
back (see `_problems`); pages cite questions with `lab.show_questions("id", ...)`.

"Raised on pages feeds in": every bullet under a page's `## New questions` heading must be quoted by (or be
the text of) a question whose source names that page; `unlogged_page_questions()` lists the ones that are not,
the log shows them, and the tests fail on them.
"""

from __future__ import annotations

import ast
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from IPython.display import Markdown

from .errors import LabError, UnknownChoiceError
from .notebook import table
from .paths import project_root, relative_to_cwd

STATUSES = ("OPEN", "EXPLORING", "ANSWERED", "SUPERSEDED")
# The user's log's own groups, then the groups of the questions-and-hypotheses notes.
TRACKS = ("Training dynamics (Track A)", "Mechanistic interpretability (Tracks B & C)",
          "Paper reproduction (Track D)", "Neurons and circuits in small networks", "Model editing",
          "Self-modelling", "Hardware & scale")
# The user's notes the log was built from; they live beside the project in ../shared/seeds when present.
USER_NOTES = ("vision.md", "questions-log.md", "questions-hypotheses.md", "retrospective.md")
# Lists the user collected rather than wrote (Neel Nanda's 200 open problems): a question may cite one, but the
# log need not hold every line of it, as it must for the notes above.
COLLECTED_LISTS = ("open-problems.txt",)
NEW_QUESTIONS_HEADINGS = ("New questions", "Open questions")
REGISTRY_FILE = "questions.yml"
MIN_QUOTE_WORDS = 3   # a shorter quote could match almost any line, so it would prove nothing


class QuestionsError(LabError, ValueError):
    """`questions.yml` breaks a rule of the log: one line naming the question and the fix."""


@dataclass(frozen=True)
class Source:
    note: str                       # one of USER_NOTES or COLLECTED_LISTS, or a page such as experiments/forgetting.qmd
    section: str = ""
    quotes: tuple[str, ...] = ()    # the note's own words, where the question's text rewords them

    def label(self) -> str:
        return self.note + (f" § {self.section}" if self.section else "")


@dataclass(frozen=True)
class Evidence:
    page: str                        # path from the project root, e.g. experiments/induction-heads.qmd
    note: str
    verdicts: tuple[str, ...] = ()   # prediction ids on that page
    claims: tuple[str, ...] = ()     # words quoted from checked learnings (lab.claim) on that page

    @property
    def rests_on_verdicts(self) -> bool:
        return bool(self.verdicts or self.claims)


@dataclass(frozen=True)
class Untestable:
    why: str          # why the lab cannot test it here
    would_take: str   # what testing it would take


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    track: str
    status: str
    sources: tuple[Source, ...]
    sub: tuple[str, ...] = ()
    evidence: tuple[Evidence, ...] = field(default_factory=tuple)
    untestable: Untestable | None = None
    replaced_by: str = ""
    note: str = ""

    @property
    def source(self) -> str:
        return "; ".join(s.label() for s in self.sources)


# ---- reading the registry ----

def load_questions(root: Path | None = None, path: Path | None = None) -> dict[str, Question]:
    """Read `questions.yml` (or `path`) and refuse it, with one line naming the question and the fix, when a
    question breaks a rule of the log."""
    root = root or project_root()
    path = path or root / REGISTRY_FILE
    raw = yaml.safe_load(path.read_text()) or {}
    questions: dict[str, Question] = {}
    for item in raw.get("questions") or ():
        q = _parse_question(item, path.name)
        if q.id in questions:
            raise QuestionsError(f"{path.name}: question id {q.id!r} appears twice; ids must be unique")
        questions[q.id] = q
    for q in questions.values():
        if problems := _problems(q, questions, root):
            raise QuestionsError(f"{path.name}: question {q.id!r} {problems[0]}")
    return questions


def _parse_question(item: dict[str, Any], where: str) -> Question:
    """One YAML item as a Question: required keys present, status and track from the fixed lists."""
    qid = item.get("id")
    missing = [k for k in ("id", "text", "track", "status", "source") if not item.get(k)]
    if missing:
        raise QuestionsError(f"{where}: question {qid!r} lacks {', '.join(missing)}; every question needs them")
    if item["status"] not in STATUSES:
        raise UnknownChoiceError("status", item["status"], STATUSES, f"for question {qid!r} in {where}")
    if item["track"] not in TRACKS:
        raise UnknownChoiceError("track", item["track"], TRACKS, f"for question {qid!r} in {where}")
    sources = tuple(_parse_source(s) for s in _as_list(item["source"]))
    if any(not e.get("page") for e in item.get("evidence") or ()):
        raise QuestionsError(f"{where}: question {qid!r} has an evidence item without `page:`; name the page")
    evidence = tuple(Evidence(e["page"], str(e.get("note", "")).strip(), tuple(map(str, e.get("verdicts") or ())),
                              tuple(map(str, e.get("claims") or ()))) for e in item.get("evidence") or ())
    untestable = None
    if "untestable_here" in item:
        u = item["untestable_here"] or {}
        untestable = Untestable(str(u.get("why") or "").strip(), str(u.get("would_take") or "").strip())
    return Question(qid, str(item["text"]).strip(), item["track"], item["status"], sources,
                    tuple(str(s) for s in item.get("sub") or ()), evidence, untestable,
                    str(item.get("replaced_by") or ""), str(item.get("note") or "").strip())


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _parse_source(value: str | dict[str, Any]) -> Source:
    """`"note § section"` or `{note, section, quote(s)}`."""
    if isinstance(value, str):
        note, _, section = value.partition("§")
        return Source(note.strip(), section.strip())
    quotes = _as_list(value.get("quotes") or value.get("quote") or [])
    return Source(str(value["note"]).strip(), str(value.get("section") or "").strip(), tuple(map(str, quotes)))


# ---- the rules ----

def _problems(q: Question, questions: dict[str, Question], root: Path) -> list[str]:
    """Every rule `q` breaks, each as the rest of one sentence that starts with the question's id."""
    return (_source_problems(q, root) + _evidence_problems(q, root) + _status_problems(q, questions))


def _source_problems(q: Question, root: Path) -> list[str]:
    problems = []
    for s in q.sources:
        if s.note.endswith(".qmd"):
            if not (root / s.note).is_file():
                problems.append(f"names source page {s.note!r}, which does not exist; fix the path")
        elif s.note not in USER_NOTES + COLLECTED_LISTS:
            problems.append(f"names source {s.note!r}; a source is one of the user's notes "
                            f"({', '.join(USER_NOTES + COLLECTED_LISTS)}) or the .qmd page that raised the question")
        problems += [f"quotes {quote!r} from {s.note}: quote at least {MIN_QUOTE_WORDS} words, or it proves nothing"
                     for quote in s.quotes if len(_words(quote).split()) < MIN_QUOTE_WORDS]
    return problems


def _evidence_problems(q: Question, root: Path) -> list[str]:
    problems = []
    for e in q.evidence:
        if not (root / e.page).is_file():
            problems.append(f"cites evidence page {e.page!r}, which does not exist; fix the path")
            continue
        found = page_verdicts(root / e.page)
        for vid in e.verdicts:
            if vid not in found.predictions:
                problems.append(f"cites verdict {vid!r} on {e.page}, but that page makes no lab.predict({vid!r}, ...); "
                                f"its predictions: {', '.join(found.predictions) or '(none)'}")
        for quote in e.claims:
            if len(_words(quote).split()) < MIN_QUOTE_WORDS:
                problems.append(f"quotes claim {quote!r} on {e.page}: quote at least {MIN_QUOTE_WORDS} words")
            elif not any(quote in c for c in found.claims):
                problems.append(f"quotes claim {quote!r}, but no lab.claim(...) on {e.page} says it; "
                                f"copy words from a claim's statement")
    return problems


def _status_problems(q: Question, questions: dict[str, Question]) -> list[str]:
    problems = []
    if q.status == "ANSWERED" and not any(e.rests_on_verdicts for e in q.evidence):
        problems.append("is ANSWERED but no evidence names a verdict: add `verdicts:` (prediction ids) or `claims:` "
                        "(words of a checked learning) from the page that answers it, or mark it EXPLORING")
    if q.status == "EXPLORING" and not q.evidence:
        problems.append("is EXPLORING but cites no evidence page: add the page under `evidence:`, or mark it OPEN")
    if q.status == "OPEN" and q.evidence:
        problems.append("is OPEN but cites evidence: a question with a page working on it is EXPLORING")
    if q.untestable and not (q.untestable.why and q.untestable.would_take):
        problems.append("is marked untestable_here without both `why:` (why the lab cannot test it) and "
                        "`would_take:` (what testing it would take)")
    if q.untestable and q.status == "ANSWERED":
        problems.append("is ANSWERED and untestable_here at once; drop one")
    if q.status == "SUPERSEDED" and (q.replaced_by not in questions or q.replaced_by == q.id):
        problems.append(f"is SUPERSEDED but replaced_by {q.replaced_by or '(nothing)'!r} is not another question's "
                        f"id; name the question that replaces it")
    if q.replaced_by and q.status != "SUPERSEDED":
        problems.append(f"names replaced_by {q.replaced_by!r} but is {q.status}; "
                        f"only a SUPERSEDED question is replaced")
    return problems


# ---- what a page records: its predictions and checked learnings, read from its source ----

@dataclass(frozen=True)
class PageVerdicts:
    title: str
    predictions: dict[str, str]     # id -> statement (computed parts shown as …)
    claims: dict[str, str]          # checked learning (computed parts shown as …) -> anchor of its section
    verdicts_anchor: str            # the section whose code shows lab.verdicts(...), for links

    def claim_anchor(self, quote: str) -> str:
        return next((anchor for statement, anchor in self.claims.items() if quote in statement), "")


# Quarto's executable cells (```{python} fences) and front matter; the same reading as the page-contract test.
CODE_FENCE = re.compile(r"^```\{python[^}]*\}[^\n]*\n(.*?)^```", re.S | re.M)
FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.S)
_PAGE_CACHE: dict[tuple[Path, int], PageVerdicts] = {}


def page_verdicts(page: Path) -> PageVerdicts:
    """The `lab.predict` ids and `lab.claim` statements a page makes, from its code (cached per file version)."""
    key = (page.resolve(), page.stat().st_mtime_ns)
    if key not in _PAGE_CACHE:
        _PAGE_CACHE[key] = _read_page_verdicts(page.read_text(), page.stem)
    return _PAGE_CACHE[key]


def _read_page_verdicts(text: str, fallback_title: str) -> PageVerdicts:
    """Walk the page section by section, so each verdict and learning links to where the page shows it."""
    predictions: dict[str, str] = {}
    claims: dict[str, str] = {}
    verdicts_anchor = ""
    for anchor, section in _sections(text):
        for cell in CODE_FENCE.findall(section):
            for call in _calls(cell, ("predict", "claim", "verdicts")):
                name = getattr(call.func, "attr", getattr(call.func, "id", ""))
                if name == "predict" and len(call.args) >= 2 and isinstance(call.args[0], ast.Constant):
                    predictions[str(call.args[0].value)] = _template(call.args[1])
                elif name == "claim" and call.args:
                    claims[_template(call.args[0])] = anchor
                elif name == "verdicts":
                    verdicts_anchor = verdicts_anchor or anchor
    return PageVerdicts(_page_title(text) or fallback_title, predictions, claims, verdicts_anchor)


def _sections(text: str) -> list[tuple[str, str]]:
    """(Quarto's id for the `##` heading, the text under it); the part before the first heading has id ''."""
    parts = re.split(r"(?m)^## (.+)$", text)
    out = [("", parts[0])]
    for heading, body in zip(parts[1::2], parts[2::2]):
        explicit = re.search(r"\{#([\w-]+)\}", heading)
        anchor = explicit.group(1) if explicit else re.sub(r"[^\w\- ]", "", heading.lower()).strip().replace(" ", "-")
        out.append((anchor, body))
    return out


def _page_title(text: str) -> str:
    front = FRONT_MATTER.match(text)
    return str((yaml.safe_load(front.group(1)) or {}).get("title") or "") if front else ""


def _calls(source: str, names: tuple[str, ...]) -> list[ast.Call]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "attr", getattr(n.func, "id", None)) in names]


def _template(node: ast.AST) -> str:
    """A statement's literal words, with every computed part as `…` (f-strings and `"a" + b` alike)."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(str(v.value) if isinstance(v, ast.Constant) else "…" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _template(node.left) + _template(node.right)
    return "…"


# ---- feeding in: question-like lines of the notes and of pages' "New questions" ----

def _words(text: str) -> str:
    """Text reduced to lower-case words, so a quote matches whatever the line's links, code or punctuation."""
    text = re.sub(r"`\{python\}[^`]*`", " ", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def note_question_lines(text: str) -> list[str]:
    """Lines of a user's note that ask something (a word, quote or bracket right before `?`), outside code."""
    lines, in_code = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        elif not in_code and re.search(r"[\w)\"”’*]\?", line):
            lines.append(line.strip())
    return lines


def page_new_questions(text: str) -> list[str]:
    """The bullets under a page's `## New questions` (or `## Open questions`) heading, each joined into one line."""
    bullets: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("#"):
            inside = line.lstrip("#").strip() in NEW_QUESTIONS_HEADINGS and line.startswith("## ")
        elif inside and line.startswith("- "):
            bullets.append(line[2:].strip())
        elif inside and bullets and line.startswith("  ") and line.strip():
            bullets[-1] += " " + line.strip()
    return bullets


def covers(q: Question, note: str, line: str) -> bool:
    """Whether `q` logs this line of `note`: it cites the note, and its text, a sub-question or a quote is in it."""
    said = _words(line)
    candidates = [q.text, *q.sub, *(quote for s in q.sources if s.note == note for quote in s.quotes)]
    return any(s.note == note for s in q.sources) and any(
        len(w.split()) >= MIN_QUOTE_WORDS and f" {w} " in f" {said} " for w in map(_words, candidates))


def unlogged(questions: dict[str, Question], note: str, lines: list[str]) -> list[str]:
    return [line for line in lines if not any(covers(q, note, line) for q in questions.values())]


def unlogged_page_questions(questions: dict[str, Question] | None = None,
                            root: Path | None = None) -> list[tuple[str, str]]:
    """(page, bullet) for every new question a page raises that the log does not hold yet."""
    from .pages import list_pages

    root = root or project_root()
    questions = load_questions(root) if questions is None else questions
    out = []
    for page in list_pages(root):
        rel = page.relative_to(root).as_posix()
        out += [(rel, b) for b in unlogged(questions, rel, page_new_questions(page.read_text()))]
    return out


def unlogged_note_questions(notes_dir: Path, questions: dict[str, Question] | None = None) -> list[tuple[str, str]]:
    """(note, line) for every question-like line of the user's notes that no question logs."""
    questions = load_questions() if questions is None else questions
    out = []
    for note in USER_NOTES:
        lines = note_question_lines((notes_dir / note).read_text())
        out += [(note, line) for line in unlogged(questions, note, lines)]
    return out


def notes_dir(root: Path | None = None) -> Path:
    """Where the user's notes live: `../shared/seeds` beside the project (absent in a bare checkout)."""
    return (root or project_root()).parent / "shared" / "seeds"


# ---- rendering ----

def _link(page: str, anchor: str = "") -> str:
    return relative_to_cwd(project_root() / page) + (f"#{anchor}" if anchor else "")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


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


def status_counts(questions: dict[str, Question] | None = None) -> dict[str, int]:
    questions = load_questions() if questions is None else questions
    return {s: sum(q.status == s for q in questions.values()) for s in STATUSES}


def counts_frame(questions: dict[str, Question] | None = None) -> pd.DataFrame:
    """Questions per track and status, with a row of totals."""
    questions = load_questions() if questions is None else questions
    rows = []
    for track in TRACKS:
        in_track = {k: q for k, q in questions.items() if q.track == track}
        if in_track:
            rows.append({"track": track, **status_counts(in_track), "total": len(in_track)})
    rows.append({"track": "All tracks", **status_counts(questions), "total": len(questions)})
    return pd.DataFrame(rows)


def counts_table(questions: dict[str, Question] | None = None) -> Markdown:
    return table(counts_frame(questions), caption="Questions by track and status")


def filter_controls(questions: dict[str, Question] | None = None) -> Markdown:
    """Two selects that hide questions by status and track: an inline script, no network. A Markdown raw-HTML
    block, not `text/html`: Quarto adds require.js and jQuery from a CDN to any page with an HTML output."""
    questions = load_questions() if questions is None else questions
    status_opts = "".join(f'<option value="{s}">{s}</option>' for s in STATUSES)
    tracks = [t for t in TRACKS if any(q.track == t for q in questions.values())]
    track_opts = "".join(f'<option value="{_slug(t)}">{html.escape(t)}</option>' for t in tracks)
    return Markdown(f"""\n```{{=html}}\n<div class="lab-question-filter">
<label>Status <select id="lab-q-status"><option value="">all</option>{status_opts}</select></label>
<label>Track <select id="lab-q-track"><option value="">all</option>{track_opts}</select></label>
<span id="lab-q-shown" aria-live="polite"></span>
</div>
<script>
(function () {{
  function apply() {{
    var s = document.getElementById("lab-q-status").value, t = document.getElementById("lab-q-track").value, n = 0;
    document.querySelectorAll(".lab-question").forEach(function (q) {{
      var show = (!s || q.dataset.status === s) && (!t || q.dataset.track === t);
      q.hidden = !show;
      if (show) {{ n += 1; }}
    }});
    document.querySelectorAll("section.level2").forEach(function (sec) {{
      if (sec.querySelector(".lab-question")) {{ sec.hidden = !sec.querySelector(".lab-question:not([hidden])"); }}
    }});
    document.getElementById("lab-q-shown").textContent = n + " of {len(questions)} questions shown";
  }}
  document.addEventListener("DOMContentLoaded", function () {{
    ["lab-q-status", "lab-q-track"].forEach(function (id) {{
      document.getElementById(id).addEventListener("change", apply);
    }});
    apply();
  }});
}})();
</script>\n```\n""")


def _title_attr(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


OUTCOME_MARK = {"held": " held ✔", "failed": " failed ✘"}


def _evidence_lines(e: Evidence, outcomes: dict[tuple[str, str], str]) -> list[str]:
    """One evidence item: the page, why it counts, and the verdicts it rests on, linked to where they show, each
    with its outcome from the page's current verdict log (none shown where that log is missing or stale)."""
    found = page_verdicts(project_root() / e.page)
    lines = [f"- [{found.title}]({_link(e.page)}) (`{e.page}`): {e.note}"]
    if e.verdicts:
        refs = ", ".join(f'[`{v}`]({_link(e.page, found.verdicts_anchor)} "{_title_attr(found.predictions[v])}")'
                         + OUTCOME_MARK.get(outcomes.get((e.page, v)), "") for v in e.verdicts)
        lines.append(f"  - Predictions: {refs}")
    if e.claims:
        refs = "; ".join(f"[“{c}…”]({_link(e.page, found.claim_anchor(c))})" for c in e.claims)
        lines.append(f"  - Checked learnings: {refs}")
    return lines


def _question_block(q: Question, questions: dict[str, Question], outcomes: dict[tuple[str, str], str]) -> list[str]:
    out = [f'::: {{.lab-question data-status="{q.status}" data-track="{_slug(q.track)}"}}', "",
           f"### {q.text} {{#{q.id}}}", "",
           f"`{q.status}` · id `{q.id}` · from {'; '.join(_source_label(s) for s in q.sources)}", ""]
    if q.note:
        out += [q.note, ""]
    out += [f"- {s}" for s in q.sub]
    if q.replaced_by:
        r = questions[q.replaced_by]
        out += ["", f"Superseded by [{r.text}](#{r.id}) (`{r.status}`)."]
    if q.untestable:
        out += ["", '::: {.callout-note appearance="simple" title="The lab cannot test this here"}',
                f"**Why:** {q.untestable.why}", "", f"**What it would take:** {q.untestable.would_take}", ":::"]
    if q.evidence:
        cited = {(e.page, v) for e in q.evidence for v in e.verdicts}                  # each prediction once
        decided = [outcomes[key] for key in sorted(cited) if key in outcomes]
        tally = (f" — its predictions: {decided.count('held')} held, {decided.count('failed')} failed"
                 if decided else "")
        out += ["", f"**Evidence**{tally}", ""]
        for e in q.evidence:
            out += _evidence_lines(e, outcomes)
    return out + ["", ":::", ""]


def _source_label(s: Source) -> str:
    label = f"[{s.label()}]({_link(s.note, _slug(s.section))})" if s.note.endswith(".qmd") else f"*{s.label()}*"
    return label + "".join(f" “{quote}”" for quote in s.quotes)


def questions_log() -> Markdown:
    """The whole log, grouped by track: each question with an anchor, its source, sub-questions, why it cannot
    be tested here (where so), what supersedes it, and its evidence with the verdict ids it rests on."""
    from .scorecard import current_outcomes

    questions, outcomes = load_questions(), current_outcomes()
    out = []
    if pending := unlogged_page_questions(questions):
        out += ["::: {.callout-warning}", "## Raised on pages, not yet in the log", ""]
        out += [f"- [{page}]({_link(page)}): {bullet}" for page, bullet in pending]
        out += ["", "Add each to `questions.yml` with the page as its source.", ":::", ""]
    for track in TRACKS:
        in_track = [q for q in questions.values() if q.track == track]
        if in_track:
            out.append(f"## {track}\n")
            for q in in_track:
                out += _question_block(q, questions, outcomes)
    return Markdown("\n".join(out))
