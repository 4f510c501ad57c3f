"""The site's structure: navigation, the questions registry, and the page contract, checked statically."""

import ast
import re

import pytest
import yaml

from labpy.pages import list_pages, navbar_groups, parse_page
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


# Functions and chart methods whose value only shows when it is the last expression of a cell.
DISPLAYED = {"table", "verdicts", "provenance_badge", "line_chart", "heatmap", "bar_chart", "scatter_chart",
             "vertical_rules", "Chart", "Markdown", "HTML", "show_questions", "questions_log", "LayerChart",
             "HConcatChart", "VConcatChart", "hconcat", "vconcat", "layer"}
CHART_METHODS = {"encode", "properties", "resolve_scale", "interactive", "facet", "configure_axis", "transform_filter",
                 "configure_view", "transform_calculate", "configure_legend", "add_params", "transform_fold"}


def _displayable(node: ast.AST) -> bool:
    """Whether an expression builds something a reader should see (a table, chart, verdicts, Markdown)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitOr, ast.BitAnd, ast.Add)):
        return _displayable(node.left) or _displayable(node.right)
    if isinstance(node, ast.Call):
        func = node.func
        name = getattr(func, "attr", getattr(func, "id", None))
        if name in DISPLAYED:
            return True
        if isinstance(func, ast.Attribute) and (name in CHART_METHODS or name.startswith("mark_")):
            return True
    return False


def _lost_outputs(source: str) -> list[str]:
    """Expressions that build a table or chart where Jupyter will not display it (not a cell's last line)."""
    tree = ast.parse(source)
    lost = []
    for i, stmt in enumerate(tree.body):
        last = i == len(tree.body) - 1
        if isinstance(stmt, ast.Expr) and not last and _displayable(stmt.value):
            lost.append(ast.unparse(stmt)[:80])
        for inner in ast.walk(stmt) if not isinstance(stmt, ast.Expr) else ():
            body = [s for field in ("body", "orelse", "finalbody")
                    if isinstance(getattr(inner, field, None), list) for s in getattr(inner, field)
                    if isinstance(s, ast.stmt)]
            lost += [ast.unparse(s)[:80] for s in body if isinstance(s, ast.Expr) and _displayable(s.value)]
    return lost


def test_lost_output_detector_catches_the_known_cases():
    assert _lost_outputs("lab.table(df)\nx = 1") == ["lab.table(df)"]
    assert _lost_outputs("for c in cs:\n    lab.plots.line_chart(c, 'a', 'b')") != []
    assert _lost_outputs("a = 1\nlab.table(df)") == []
    assert _lost_outputs("display(lab.table(df))\nx = 1") == []
    assert _lost_outputs("alt.Chart(d).mark_line().encode(x='a') | other\nx = 1") != []


@pytest.mark.parametrize("page", list_pages(), ids=lambda p: p.name)
def test_every_table_and_chart_is_displayed(page):
    """A `lab.table(...)` that is not the last line of its cell is computed and never shown (three were)."""
    lost = [expr for source in _code_cells(page) for expr in _lost_outputs(source)]
    assert not lost, f"{page.name} builds output it never displays (make it the cell's last line or display(...)): {lost}"


def test_track_is_declared_once_in_the_registry(root):
    """The registry's track is the one source: each experiment page's subtitle and navbar group must agree."""
    from labpy.experiments import all_experiments
    from labpy.experiments.registry import TRACKS

    groups = {page: group for group, pages in navbar_groups(root).items() for page in pages}
    for exp in all_experiments():
        assert exp.track in TRACKS, f"{exp.name}: track {exp.track!r} is not one of {list(TRACKS)}"
        front, _ = parse_page(root / exp.page)
        subtitle = front.get("subtitle", "")
        assert subtitle.startswith(f"Track: {exp.track} ·"), \
            f"{exp.page}: subtitle {subtitle!r} must start with 'Track: {exp.track} ·' (from the registry)"
        assert groups.get(exp.page) == exp.track, \
            f"{exp.page} sits under navbar group {groups.get(exp.page)!r}, but its track is {exp.track!r}"
    assert list(dict.fromkeys(g for g in groups.values() if g)) == [t for t in TRACKS if t in groups.values()], \
        "navbar groups must follow the registry's order of tracks"


# The page contract (DESIGN.md): sections in this order, each with the call that makes it what it is.
CONTRACT = [("Questions", "show_questions"), ("Predictions", "predict"), ("Method", "provenance_badge"),
            ("Results", None), ("Verdicts", "verdicts"), ("What we learned", "claim")]


def contract_problems(text: str, name: str, needs_questions: bool = True) -> list[str]:
    """What an experiment page lacks of the page contract; empty when it follows it."""
    sections: dict[str, list[str]] = {}
    current = None
    for block in re.split(r"(?m)^(## .+)$", text):
        if block.startswith("## "):
            current = block[3:].strip()
            sections.setdefault(current, [])
        elif current is not None:
            sections[current] += re.findall(r"```\{python[^}]*\}\n(.*?)```", block, re.S)
    problems, order = [], list(sections)
    wanted = [(h, call) for h, call in CONTRACT if needs_questions or h != "Questions"]
    positions = []
    for heading, call in wanted:
        if heading not in sections:
            problems.append(f"{name}: no '## {heading}' section")
            continue
        positions.append(order.index(heading))
        if call and not any(_calls(src, call) for src in sections[heading]):
            problems.append(f"{name}: '## {heading}' has no {call}(...) call")
    if positions != sorted(positions):
        problems.append(f"{name}: sections must come in the order {[h for h, _ in wanted]}")
    return problems


def test_the_contract_check_catches_a_page_that_breaks_it(root):
    template = re.search(r"<!-- template-page:start -->\n````markdown\n(.*?)````\n<!-- template-page:end -->",
                         (root / "CONTRIBUTING.md").read_text(), re.S).group(1)
    assert contract_problems(template, "template") == []
    assert contract_problems(template.replace("lab.claim(", "print("), "t") == ["t: '## What we learned' has no claim(...) call"]
    swapped = template.replace("## Verdicts", "## Tmp").replace("## Predictions", "## Verdicts").replace("## Tmp", "## Predictions")
    assert any("order" in p for p in contract_problems(swapped, "t"))


@pytest.mark.parametrize("page", sorted({e.page for e in __import__("labpy.experiments", fromlist=["x"]).all_experiments()}))
def test_page_contract(root, page):
    from labpy.experiments import all_experiments

    track = next(e.track for e in all_experiments() if e.page == page)
    assert contract_problems((root / page).read_text(), page, needs_questions=track != "The lab itself") == []
