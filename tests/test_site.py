"""The site's structure: navigation, the questions registry, and the page contract, checked statically."""

import ast
import re

import pytest
import yaml

from labpy.pages import list_pages, parse_page
from labpy.questions import STATUSES, load_questions


def _code_cells(page):
    _, nb = parse_page(page)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _calls(source: str, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
            and getattr(n.func, "attr", getattr(n.func, "id", None)) == name]


def test_quarto_project_config(root):
    config = yaml.safe_load((root / "_quarto.yml").read_text())
    assert config["project"]["type"] == "website"
    assert config["execute"]["freeze"] == "auto" and config["jupyter"] == "python3"
    nav = yaml.safe_dump(config["website"]["navbar"])
    linked = set(re.findall(r"href: (\S+\.qmd)", nav))
    pages = {p.relative_to(root).as_posix() for p in list_pages(root)}
    assert linked == pages, f"pages missing from the navbar: {pages - linked}; dead links: {linked - pages}"
    texts = re.findall(r"text: (.+)", nav)
    for section in ("Home", "Concepts", "Experiments", "Papers", "Questions"):
        assert section in texts
    assert "assets/vega/*.js" in config["project"]["resources"]


def test_questions_registry_is_valid(root):
    questions = load_questions(root)
    assert len(questions) >= 12
    assert {q.status for q in questions.values()} <= set(STATUSES)


def test_every_cited_question_exists(root):
    questions = load_questions(root)
    cited = set()
    for page in list_pages(root):
        for source in _code_cells(page):
            for call in _calls(source, "show_questions"):
                ids = [a.value for a in call.args if isinstance(a, ast.Constant)]
                assert ids, f"{page}: show_questions needs literal ids"
                missing = set(ids) - set(questions)
                assert not missing, f"{page} cites unknown questions {missing}"
                cited |= set(ids)
    assert cited


def test_answered_questions_link_to_a_page_with_verdicts(root):
    for q in load_questions(root).values():
        if q.status != "ANSWERED":
            continue
        assert q.evidence, f"ANSWERED question {q.id!r} has no evidence"
        with_verdicts = [e.page for e in q.evidence
                         if any(_calls(s, "verdicts") for s in _code_cells(root / e.page))]
        assert with_verdicts, f"ANSWERED question {q.id!r} links to no page that shows verdicts"


@pytest.mark.parametrize("page", [p for p in list_pages() if "experiments" in p.parts or "papers" in p.parts],
                         ids=lambda p: p.name)
def test_predictions_come_before_results(page):
    cells = _code_cells(page)
    predicted = [i for i, s in enumerate(cells) if _calls(s, "predict")]
    loaded = [i for i, s in enumerate(cells) if _calls(s, "results")]
    judged = [i for i, s in enumerate(cells) if _calls(s, "verdicts")]
    assert predicted and loaded and judged, f"{page.name}: needs lab.predict, lab.results and lab.verdicts"
    assert max(predicted) < min(loaded) <= max(judged), f"{page.name}: predictions must precede the results"


def test_pages_have_no_placeholders_or_cdn(root):
    for page in list_pages(root):
        text = page.read_text()
        assert not re.search(r"\bTBD\b|\bTODO\b|lorem ipsum|coming soon", text, re.I), page
        assert not re.search(r"cdn\.jsdelivr|unpkg\.com|cdnjs", text), page
