"""labpy's modules form layers, and imports only run downward: store and helpers < models, tasks, training <
experiments < page helpers and the CLI. An upward import (a model module looking up the experiment registry)
ties a lower layer to everything above it and makes import cycles one edit away."""

import ast
from pathlib import Path

import labpy

PACKAGE = Path(labpy.__file__).parent

# lowest first; a module's layer is that of its longest matching prefix
LAYERS = (
    ("base", ("errors", "paths", "history", "validation", "device", "provenance", "store", "store_migrate", "run_times",
              "render_log",
              "nf4", "pages")),
    ("core", ("train", "tasks", "models", "toy", "interp", "memory", "finetune", "hardware")),
    ("experiments", ("experiments",)),
    ("top", ("scorecard", "notebook", "explorer", "plots", "questions", "status", "cli", "__init__")),
)


def layer_of(module: str) -> int:
    """`module` is dotted from inside the package ('models.lab_lm', '__init__')."""
    for level, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"labpy.{module} is in no layer: add it to LAYERS in {__file__}")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)


def imported_modules(path: Path, source: str | None = None) -> list[str]:
    """Package-internal modules a file imports, dotted from the package root, lazy imports included."""
    here = module_name(path).split(".") if path != PACKAGE / "__init__.py" else []
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[str] = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module and (node.module == "labpy" or node.module.startswith("labpy.")):
                prefix = node.module.split(".")[1:]
            else:
                continue
            if node.module is None or node.module == "labpy":   # `from . import plots`: submodules
                found += [".".join([*prefix, a.name]) for a in node.names]
            else:
                found.append(".".join(prefix))
        elif isinstance(node, ast.Import):
            found += [a.name.removeprefix("labpy.") for a in node.names if a.name.startswith("labpy.")]
    return [m for m in found if m]


def test_layers_cover_every_module():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path) if path.name != "__init__.py" or path.parent != PACKAGE else "__init__")


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = "__init__" if path == PACKAGE / "__init__.py" else module_name(path)
        for target in imported_modules(path):
            if layer_of(target) > layer_of(name):
                upward.append(f"labpy.{name} imports labpy.{target} "
                              f"({LAYERS[layer_of(name)][0]} -> {LAYERS[layer_of(target)][0]})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import():
    """The rule can fail: a lazy registry import inside a model module (the lab LM's old `lab_lm_dir`) is found
    and ranks upward."""
    path = PACKAGE / "models" / "lab_lm.py"
    source = path.read_text() + "\n\ndef _f():\n    from ..experiments.registry import results\n"
    assert "experiments.registry" in imported_modules(path, source)
    assert layer_of("experiments.registry") > layer_of(module_name(path))
    assert imported_modules(PACKAGE / "__init__.py", "from . import plots\nfrom .store import RunStore\n") == \
        ["plots", "store"]


# ---- page analysis beside the training code ----
# Inside the experiments layer, `NAME_analysis.py` (what a page computes from the store) sits above `NAME.py` (the
# training code that registers the experiment): the analysis imports the training module, never the reverse, so
# `lab run` never loads page code and a page can change without touching what a stored run was made by.

EXPERIMENTS = PACKAGE / "experiments"
ANALYSIS_MARKER = "# ---- analysis"          # the old convention: page analysis at the bottom of the training module
NOT_YET_SPLIT: set[str] = set()             # modules still holding page analysis under the marker line


def is_analysis(stem: str) -> bool:
    from labpy.experiments.registry import ANALYSIS_SUFFIXES

    return stem.endswith(ANALYSIS_SUFFIXES)


def training_module_of(stem: str) -> str:
    from labpy.experiments.registry import ANALYSIS_SUFFIXES

    return next(stem.removesuffix(s) for s in ANALYSIS_SUFFIXES if stem.endswith(s))


def analysis_direction_problems(sources: dict[str, str]) -> list[str]:
    """`sources`: file stem in `labpy/experiments/` -> source. An analysis module needs its training module beside
    it; no other module of the package (training modules, the registry, `__init__`) imports an analysis module."""
    problems = []
    for stem, source in sorted(sources.items()):
        if is_analysis(stem):
            if training_module_of(stem) not in sources:
                problems.append(f"labpy.experiments.{stem} has no training module "
                                f"labpy.experiments.{training_module_of(stem)} beside it")
            continue
        for target in experiment_modules_imported(stem, source):
            if is_analysis(target):
                problems.append(f"labpy.experiments.{stem} imports page analysis labpy.experiments.{target}")
    return problems


def experiment_modules_imported(stem: str, source: str) -> list[str]:
    """Modules of `labpy.experiments` that `stem`'s source imports, lazily or not, by any spelling: also
    `from labpy.experiments import x` and `from . import x`, which name the package's submodules."""
    path, found = EXPERIMENTS / f"{stem}.py", []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in imported_modules(path, ast.unparse(node)):
                if target == "experiments" and isinstance(node, ast.ImportFrom):
                    found += [a.name for a in node.names]
                elif target.startswith("experiments."):
                    found.append(target.split(".")[1])
    return found


def experiment_sources() -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted(EXPERIMENTS.glob("*.py"))}


def test_analysis_modules_sit_above_their_training_modules():
    sources = experiment_sources()
    assert [s for s in sources if is_analysis(s)], "no analysis modules found: is the naming convention still used?"
    assert not analysis_direction_problems(sources), "\n".join(analysis_direction_problems(sources))


def test_the_direction_check_sees_a_training_module_importing_its_analysis():
    sources = experiment_sources()
    lazy = sources["induction"] + "\n\ndef _f():\n    from .induction_analysis import measurements\n"
    assert analysis_direction_problems({**sources, "induction": lazy}) == \
        ["labpy.experiments.induction imports page analysis labpy.experiments.induction_analysis"]
    eager = "from labpy.experiments import lora_rank_analysis\n" + sources["forgetting"]
    assert analysis_direction_problems({**sources, "forgetting": eager}) == \
        ["labpy.experiments.forgetting imports page analysis labpy.experiments.lora_rank_analysis"]
    orphan = {**sources, "nothing_analysis": "from .registry import results\n"}
    assert analysis_direction_problems(orphan) == \
        ["labpy.experiments.nothing_analysis has no training module labpy.experiments.nothing beside it"]


def test_training_modules_hold_no_page_analysis():
    marked = {stem for stem, source in experiment_sources().items()
              if any(line.startswith(ANALYSIS_MARKER) for line in source.splitlines())}
    assert marked <= NOT_YET_SPLIT, (f"page analysis under a '{ANALYSIS_MARKER}' line in "
                                     f"{sorted(marked - NOT_YET_SPLIT)}: move it to NAME_analysis.py beside the "
                                     "training module (CONTRIBUTING.md)")


def test_analysis_modules_register_nothing():
    import importlib

    from labpy.experiments import all_experiments

    sources = experiment_sources()
    for stem, source in sources.items():
        if is_analysis(stem):
            calls = [n.func for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)]
            assert not [f for f in calls if getattr(f, "id", getattr(f, "attr", None)) == "register"], stem
    before = {e.name: e for e in all_experiments()}
    assert not [e.name for e in before.values() if is_analysis(e.run.__module__.rsplit(".", 1)[-1])]
    for stem in sources:
        if is_analysis(stem):
            importlib.import_module(f"labpy.experiments.{stem}")
    after = {e.name: e for e in all_experiments()}
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
